"""How every bench measures: interleaved repeated timing, paired ratios, peak memory.

On a shared, noisy machine absolute times drift. Running the variants round-robin
(A B C, then C B A, ...) puts every variant under the same drift, so the median of the
per-round ratios between two variants is stable even when the absolute times are not.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from gradaccum.memory.peak import PeakMeter


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the count: on a small shared machine a second
    OpenMP thread mostly waits for a core, and small kernels pay for the hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one variant, one sample per round."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def interleaved_timings(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 0
) -> dict[str, Timing]:
    """Time each function ``repeats`` times, round-robin, reversing the order every round.

    ``warmup`` untimed rounds run first. Garbage is collected before each call, untimed.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            gc.collect()
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(s)) for name, s in samples.items()}


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over rounds of ``num / den``: drift common to a round cancels out."""
    return statistics.median(a / b for a, b in zip(num.samples, den.samples, strict=True))


def peak_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak memory while ``fn`` runs: process resident set on CPU, allocator peak on CUDA."""
    with PeakMeter(device) as meter:
        fn()
    return meter.peak
