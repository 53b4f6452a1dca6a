"""Recognize an out-of-memory error from any backend."""

from __future__ import annotations

import torch

_CPU_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory")


def is_oom(exc: BaseException) -> bool:
    """True for CUDA OOM, a CPU allocator failure, or Python's MemoryError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _CPU_MESSAGES)
