"""Global clipping: clip the accumulated gradient of the whole window (the common practice)."""

from __future__ import annotations

from torch import Tensor

from gradaccum.transforms.base import Transform, clip_coefficient, scale_


class ClipGlobal(Transform):
    """Scale the accumulated gradient g by ``min(1, max_norm / ||g||)``."""

    scales_uniformly = True

    def __init__(self, max_norm: float) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)

    def window(self, grads: list[Tensor], norm: Tensor) -> dict[str, float]:
        coef = clip_coefficient(float(norm), self.max_norm)
        scale_(grads, coef)
        return {"clip_coef": coef}
