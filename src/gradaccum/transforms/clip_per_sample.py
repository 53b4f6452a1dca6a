"""Per-sample clipping (PS-Clip-SGD): clip every sample's gradient, then average.

The window gradient is ``g = (1/n) sum_i min(1, lam/||g_i||) g_i`` over the n samples of
the whole window (all its micro-batches), where g_i is the gradient of sample i's loss
``L_i = (n/N) * (sum of its item losses)`` and N is the window's count of loss-bearing
items: a sample is a sequence for token-level losses, and for per-sample losses N = n and
L_i is just the sample's loss. So ``(1/n) sum_i L_i`` is the window's mean loss and with no
clipping g is exactly the big-batch gradient.

The engine backpropagates each micro-batch's summed loss times ``loss_scale`` (1/N, times
the GradScaler's scale S in fp16); if h_i is sample i's share of that backward, then
``g_i = n h_i / (loss_scale N)``, and this transform puts ``sum_i min(1, lam/||g_i||) h_i``
into ``.grad``: accumulated over micro-batches, it is g (times S, which the engine
unscales). The per-sample norms and weighted sums come from ``gradaccum.persample`` in the
one ordinary backward. ``lam`` is a number or a function of the optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from gradaccum.errors import UserError
from gradaccum.persample import Collector
from gradaccum.transforms.base import MicroContext, Transform


class ClipPerSample(Transform):
    """Clip each sample's gradient to norm ``lam`` and average over the window's samples.

    ``lam`` may be a function of the step (optimizer steps taken since this transform was
    made, kept in ``self.step``). ``allow_fallback`` lets layer kinds without a per-sample
    rule go through the exact but slow ``torch.func`` fallback instead of failing.
    """

    def __init__(self, lam: float | Callable[[int], float], allow_fallback: bool = False) -> None:
        if not callable(lam) and not lam > 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        self.lam = lam
        self.allow_fallback = allow_fallback
        self.step = 0
        self.collector: Collector | None = None

    def current_lam(self) -> float:
        """The threshold of the current step."""
        lam = float(self.lam(self.step)) if callable(self.lam) else float(self.lam)
        if not lam > 0:
            raise ValueError(f"the per-sample clipping schedule gave lam={lam} at step {self.step}")
        return lam

    def begin_window(self, model: nn.Module) -> None:
        self.collector = Collector(model, self.allow_fallback)
        self.collector.attach()

    def after_backward(self, params: list[Tensor], ctx: MicroContext) -> dict[str, float]:
        assert self.collector is not None, "begin_window was not called"
        collected = self.collector.take()
        if ctx.window_samples is None or ctx.window_items is None:
            raise UserError(
                "per-sample clipping needs the window's sample and item counts up front: "
                "open the window with total_items and total_samples"
            )
        if not collected.results:
            return {}
        norms = collected.sq_norms().sqrt() * (
            ctx.window_samples / (ctx.loss_scale * ctx.window_items)
        )
        if ctx.samples and norms.shape[0] != ctx.samples:
            raise UserError(
                f"per-sample clipping saw {norms.shape[0]} samples in a micro-batch the engine "
                f"counts as {ctx.samples}: the layers' leading dimension must be the sample"
            )
        lam = self.current_lam()
        coef = (lam / norms).clamp(max=1.0)
        collected.add_weighted(coef)
        return {
            "ps_clipped_frac": float((norms > lam).float().mean()),
            "ps_grad_norm": float(norms.mean()),
        }

    def window(self, grads: list[Tensor], norm: Tensor) -> dict[str, float]:
        self.step += 1
        return {}

    def state_dict(self) -> dict:
        return {"step": self.step}  # where a lambda schedule stands

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])

    def end_window(self) -> None:
        if self.collector is not None:
            self.collector.detach()
            self.collector = None
