"""Micro-batch clipping: clip each micro-batch's own mean gradient before adding it.

With micro-batch j holding n_j of the window's N loss-bearing items and mean gradient g_j,
the window gradient is ``sum_j (n_j / N) * min(1, max_norm / ||g_j||) * g_j``; with no
clipping active this is exactly the big-batch gradient.
"""

from __future__ import annotations

from torch import Tensor

from gradaccum.transforms.base import MicroContext, Transform, clip_coefficient, scale_, total_norm


class ClipMicro(Transform):
    """Clip every micro-batch's mean gradient to ``max_norm``."""

    isolates_micro_batches = True

    def __init__(self, max_norm: float) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)

    def micro(self, grads: list[Tensor], ctx: MicroContext) -> dict[str, float]:
        norm = float(total_norm(grads)) * ctx.to_mean
        coef = clip_coefficient(norm, self.max_norm)
        scale_(grads, coef)
        return {"micro_clip_coef": coef, "micro_grad_norm": norm}
