"""The baseline: a fixed weighted sum of the task gradients."""

from __future__ import annotations

import torch
from torch import Tensor

from gradaccum.multitask.base import Combiner, TaskGrads, weighted_rows


class WeightedSum(Combiner):
    """``sum_k w_k g_k``; tasks missing from ``weights`` (or all, if None) weigh 1."""

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = {k: float(v) for k, v in (weights or {}).items()}

    def combine(self, tg: TaskGrads) -> tuple[Tensor, dict[str, float]]:
        unknown = sorted(set(self.weights) - set(tg.names))
        if unknown:
            raise ValueError(f"weights name unknown tasks {unknown}; tasks are {tg.names}")
        coef = torch.tensor([self.weights.get(n, 1.0) for n in tg.names], dtype=torch.float64)
        return weighted_rows(coef, tg.grads), {}
