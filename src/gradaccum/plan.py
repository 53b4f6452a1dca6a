"""Split a global batch into micro-batches and count its loss-bearing items.

A global batch is either a mapping / tuple / single tensor whose first dimension indexes
samples, or a plain list of samples that a ``collate`` function turns into a micro-batch.
The plan is made before any backward pass so that every micro-batch loss can be divided
by the *global* item count, which is what makes accumulation exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Batch = Any
CountFn = Callable[[Batch], int]
SizeFn = Callable[[Any], int]


def batch_len(batch: Batch) -> int:
    """Number of samples in a batch (first dimension of its tensors, or list length)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return batch_len(next(iter(batch.values())))
    if isinstance(batch, tuple):
        return batch_len(batch[0])
    if isinstance(batch, Sequence):
        return len(batch)
    raise TypeError(f"cannot take the length of a batch of type {type(batch).__name__}")


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Samples ``start:stop`` of a batch, keeping its structure."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, Mapping):
        return {k: slice_batch(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(slice_batch(v, start, stop) for v in batch)
    if isinstance(batch, Sequence):
        return batch[start:stop]
    return batch


def split_by_size(n: int, micro_batch_size: int) -> list[range]:
    """Consecutive index ranges of at most ``micro_batch_size`` samples (last may be short)."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    return [range(i, min(i + micro_batch_size, n)) for i in range(0, n, micro_batch_size)]


def split_by_tokens(sizes: Sequence[int], token_budget: int) -> list[range]:
    """Greedy consecutive ranges whose padded cost (count x longest) stays within the budget.

    A single sample longer than the budget gets a micro-batch of its own.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    ranges: list[range] = []
    start, longest = 0, 0
    for i, size in enumerate(sizes):
        new_longest = max(longest, size)
        if i > start and new_longest * (i - start + 1) > token_budget:
            ranges.append(range(start, i))
            start, new_longest = i, size
        longest = new_longest
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges


def sample_sizes(batch: Batch, size_fn: SizeFn) -> list[int]:
    """Per-sample sizes (e.g. tokens) used for token-budget splitting."""
    return [size_fn(slice_batch(batch, i, i + 1)) for i in range(batch_len(batch))]


@dataclass
class Plan:
    """Materialized micro-batches of one global batch with their loss-bearing item counts."""

    micro_batches: list[Batch]
    counts: list[Any]
    """Loss-bearing items per micro-batch: ints, or dicts of ints per task."""
    sizes: list[int]

    @property
    def total(self) -> int:
        return sum(self.counts)


def make_plan(
    batch: Batch,
    count_fn: CountFn,
    *,
    micro_batch_size: int | None = None,
    token_budget: int | None = None,
    size_fn: SizeFn | None = None,
    collate: Callable[[Batch], Batch] | None = None,
) -> Plan:
    """Split ``batch`` by sample count or by token budget and count each micro-batch's items."""
    n = batch_len(batch)
    if n == 0:
        raise ValueError("the global batch is empty")
    if token_budget is not None:
        if size_fn is None:
            raise ValueError("a token budget needs a size_fn giving each sample's length")
        ranges = split_by_tokens(sample_sizes(batch, size_fn), token_budget)
    else:
        ranges = split_by_size(n, micro_batch_size or n)
    micro = [slice_batch(batch, r.start, r.stop) for r in ranges]
    if collate is not None:
        micro = [collate(m) for m in micro]
    counts = [_as_count(count_fn(m)) for m in micro]
    return Plan(micro_batches=micro, counts=counts, sizes=[len(r) for r in ranges])


def _as_count(value: Any) -> Any:
    """An int (or a dict of ints per task) from what a count function returned."""
    if isinstance(value, Mapping):
        return {k: int(v) for k, v in value.items()}
    return int(value)
