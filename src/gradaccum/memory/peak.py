"""Measure the peak memory of a piece of work, on CPU (resident set) or CUDA (allocator).

On Linux the kernel keeps the peak resident set size (VmHWM) and lets a process reset it
by writing ``5`` to ``/proc/self/clear_refs``; that gives an exact peak for one probe step.
Where that is not available, a background thread samples the resident set instead.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import psutil
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_lifetime_peak = 0  # the highest VmHWM seen before any reset


def _read_hwm() -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("VmHWM not found")


def lifetime_peak() -> int:
    """Peak resident bytes of the whole process so far, across PeakMeter's resets."""
    return max(_lifetime_peak, _read_hwm())


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc), so a later peak is not inflated."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def bytes_in_use(device: torch.device | str = "cpu") -> int:
    """What the process (CPU: resident set, after returning free heap) or CUDA holds now."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    release_free_memory()
    return psutil.Process().memory_info().rss


class PeakMeter:
    """Context manager measuring peak bytes in use while its body runs.

    ``device`` ``cpu`` measures the process's resident set (absolute, what a budget of the
    whole process means); ``cuda`` measures the caching allocator's peak allocation.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        release_free_memory()
        global _lifetime_peak
        try:
            _lifetime_peak = max(_lifetime_peak, _read_hwm())
            _CLEAR_REFS.write_text("5")
            self._use_hwm = True
        except OSError:
            self._use_hwm = False
            self._start_sampler()
        return self

    def _start_sampler(self) -> None:
        proc = psutil.Process()
        self.peak = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.001):
                self.peak = max(self.peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._use_hwm:
            self.peak = _read_hwm()
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
