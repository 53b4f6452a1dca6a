"""Mixed precision: bf16 autocast, or fp16 autocast with a GradScaler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

KINDS = ("fp32", "bf16", "fp16")


@dataclass
class Precision:
    """How the forward pass runs and whether losses are scaled before backward."""

    kind: str
    device_type: str
    scaler: torch.amp.GradScaler | None = None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast context for the forward pass (a no-op in fp32)."""
        if self.kind == "fp32":
            yield
            return
        dtype = torch.bfloat16 if self.kind == "bf16" else torch.float16
        with torch.autocast(self.device_type, dtype=dtype):
            yield


def make_precision(kind: str, device_type: str, init_scale: float = 2.0**16) -> Precision:
    """fp32, bf16 (autocast only) or fp16 (autocast plus a GradScaler on the same device)."""
    if kind not in KINDS:
        raise ValueError(f"precision must be one of {', '.join(KINDS)}, got {kind!r}")
    scaler = None
    if kind == "fp16":
        scaler = torch.amp.GradScaler(device_type, init_scale=init_scale)
    return Precision(kind=kind, device_type=device_type, scaler=scaler)
