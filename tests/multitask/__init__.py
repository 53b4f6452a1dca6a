"""Tests of the multi-task combiners; ``task_grads`` builds their input."""

from __future__ import annotations

import torch

from gradaccum.multitask import TaskGrads


def task_grads(
    rows, losses: dict[str, float] | None = None, shared: slice | None = None, step: int = 0
) -> TaskGrads:
    """TaskGrads for tasks t0, t1, ... with the given gradient rows (losses default to 1)."""
    grads = torch.as_tensor(rows, dtype=torch.float32)
    names = [f"t{i}" for i in range(grads.shape[0])]
    losses = losses if losses is not None else {n: 1.0 for n in names}
    return TaskGrads(names=names, grads=grads, losses=losses, shared=shared, step=step)
