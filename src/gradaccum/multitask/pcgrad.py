"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

Each task gradient g_i is projected off the normal plane of every other task's ORIGINAL
gradient g_j it conflicts with, visiting the g_j in a fresh random order per task; the
conflict test uses the partly projected g_i (Algorithm 1 of the paper). The projected
gradients are summed. All of it runs on the N x N Gram matrix: the projected g_i is kept as
coefficients over the original rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradaccum.multitask.base import (
    Combiner,
    TaskGrads,
    generator_state,
    gram,
    mix_rows,
    set_generator_state,
    weighted_rows,
)


def pcgrad_coefficients(k: Tensor, gen: torch.Generator) -> tuple[Tensor, int]:
    """Row i of the result holds the projected g_i as coefficients over the originals.

    ``k`` is the (N, N) fp64 Gram matrix; also returns the number of projections made.
    """
    n = k.shape[0]
    coef = torch.eye(n, dtype=torch.float64)
    projections = 0
    for i in range(n):
        for j in torch.randperm(n, generator=gen).tolist():
            if j == i or k[j, j] <= 0:
                continue
            dot = float(coef[i] @ k[:, j])
            if dot < 0:
                coef[i, j] -= dot / float(k[j, j])
                projections += 1
    return coef, projections


class PCGrad(Combiner):
    """Sum of the conflict-projected task gradients; the random order is seeded and resumable."""

    def __init__(self, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def project(self, tg: TaskGrads) -> Tensor:
        """The (N, P) projected task gradients (the rows ``combine`` sums)."""
        coef, _ = pcgrad_coefficients(gram(tg.grads), self.gen)
        return mix_rows(coef, tg.grads)

    def combine(self, tg: TaskGrads) -> tuple[Tensor, dict[str, float]]:
        coef, projections = pcgrad_coefficients(gram(tg.grads), self.gen)
        return weighted_rows(coef.sum(0), tg.grads), {"pcgrad/projections": float(projections)}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": generator_state(self.gen)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        set_generator_state(self.gen, d["generator"])
