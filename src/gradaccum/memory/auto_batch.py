"""Find the largest micro-batch that fits a memory budget by measuring probe steps."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gradaccum.errors import UserError

MiB = 2**20


class BudgetTooSmall(UserError):
    """Not even a micro-batch of one sample fits the memory budget."""


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes the optimizer's state will take once it exists but does not yet.

    Adam-style optimizers keep two tensors per parameter (three with amsgrad), SGD one
    with momentum; the state is created at the first step, after any probe has run. An
    optimizer that keeps its state elsewhere says what it will hold in memory with
    ``resident_state_bytes()``.
    """
    if hasattr(optimizer, "resident_state_bytes"):
        return int(optimizer.resident_state_bytes())
    per_param = 0
    for group in optimizer.param_groups:
        if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            per_param = 3 if group.get("amsgrad") else 2
        elif isinstance(optimizer, torch.optim.SGD):
            per_param = 1 if group.get("momentum", 0) else 0
        else:
            per_param = 2
        break
    total = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and not optimizer.state.get(p):
                total += per_param * p.numel() * p.element_size()
    return total


def find_micro_batch_size(
    probe: Callable[[int], int],
    max_size: int,
    budget: int,
    reserve: int = 0,
    floor: int | None = None,
) -> int:
    """Largest size in ``1..max_size`` whose measured peak plus ``reserve`` fits ``budget``.

    ``probe(b)`` runs one forward and backward on ``b`` samples and returns the peak bytes.
    Sizes double until one does not fit, then a binary search settles between the two.
    With ``floor`` (bytes in use before any probe), a size is probed only if the linear
    prediction ``floor + b * (peak(1) - floor)`` fits, so a hard budget is not exceeded
    by probing a size far too large.
    """

    def fits(b: int) -> bool:
        if floor is not None and floor + b * (first - reserve - floor) + reserve > budget:
            return False
        return probe(b) + reserve <= budget

    first = probe(1) + reserve
    if first > budget:
        raise BudgetTooSmall(
            f"memory budget {budget / MiB:.0f} MiB cannot fit one sample: a micro-batch of 1 "
            f"needs {first / MiB:.0f} MiB; raise the budget to at least {first / MiB:.0f} MiB"
        )
    good, bad = 1, None
    while bad is None and good < max_size:
        b = min(good * 2, max_size)
        if fits(b):
            good = b
        else:
            bad = b
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good
