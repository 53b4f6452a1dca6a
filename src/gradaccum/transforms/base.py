"""What a transform is: code that runs at an accumulation point of one optimizer step.

The engine calls every transform at the points it defines:

* ``begin_window(model)``   before the first micro-batch of a window (hooks go in here);
* ``after_backward(params, ctx)`` right after each micro-batch's backward, before its
  gradient is read: the per-sample point, where a transform that captured per-sample
  quantities during backward writes its gradient into ``p.grad``;
* ``micro(grads, ctx)``     after each micro-batch's backward, on that micro-batch's
  gradient alone, before it is added to the accumulator (only for transforms with
  ``isolates_micro_batches = True``);
* ``window(grads, norm)``   on the accumulated, normalized, unscaled gradient, before the
  optimizer step; ``norm`` is its global L2 norm;
* ``end_window()``          after the step, skipped or not (hooks come out here).

Transforms edit gradients in place and return a dict of numbers to report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class MicroContext:
    """Facts about one micro-batch handed to ``Transform.micro``."""

    index: int
    items: int
    to_mean: float
    """Multiply the micro-batch gradient by this to get its own mean-over-items gradient."""
    samples: int = 0
    loss_scale: float = 1.0
    """What the summed loss was multiplied by before backward (1/window items x amp scale)."""
    window_items: int | None = None
    window_samples: int | None = None


class Transform:
    """Base class: every hook is a no-op, so a transform overrides only its points."""

    isolates_micro_batches: bool = False
    scales_uniformly: bool = False
    """True when ``window`` only multiplies every gradient by one common factor: such
    transforms also work on offloaded gradients (their ``scale`` is among ``grads``)."""

    def begin_window(self, model: nn.Module) -> None:
        """Prepare for a new window (e.g. install hooks)."""

    def after_backward(self, params: list[Tensor], ctx: MicroContext) -> dict[str, float]:
        """The per-sample point: runs after every micro-batch's backward."""
        return {}

    def micro(self, grads: list[Tensor], ctx: MicroContext) -> dict[str, float]:
        """Act on one micro-batch's gradient in place."""
        return {}

    def window(self, grads: list[Tensor], norm: Tensor) -> dict[str, float]:
        """Act on the accumulated gradient in place, before the optimizer step."""
        return {}

    def end_window(self) -> None:
        """Undo whatever ``begin_window`` set up."""

    def state_dict(self) -> dict:
        """What an exact resume needs (JSON-able); most transforms keep nothing."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` gave."""


def total_norm(grads: list[Tensor]) -> Tensor:
    """Global L2 norm of a list of gradients, computed in fp32."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm([g.float() for g in grads])
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def scale_(grads: list[Tensor], coef: float) -> None:
    """Multiply every gradient in place by ``coef``."""
    if coef != 1.0 and grads:
        torch._foreach_mul_(grads, coef)


def clip_coefficient(norm: float, max_norm: float) -> float:
    """``min(1, max_norm / norm)``; 1 for a zero gradient."""
    return 1.0 if norm <= max_norm else max_norm / norm
