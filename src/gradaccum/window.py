"""One accumulation window: micro-batch gradients in, one optimizer step (or a skip) out.

``Window.backward`` takes each micro-batch's summed loss, scales it by the window's item
count (and the amp scale), runs backward and calls the transforms' per-sample and
micro-batch points; ``Window.finish`` normalizes, unscales, runs the window transforms and
steps the optimizer, or skips the step when the loss or gradient is not finite.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gradaccum.transforms.base import MicroContext, total_norm

if TYPE_CHECKING:
    from gradaccum.engine import Accumulator

log = logging.getLogger("gradaccum")


@dataclass
class StepResult:
    """What one optimizer step did; ``loss`` is the true mean loss of the global batch."""

    step: int
    loss: float
    items: int
    samples: int
    micro_batches: int
    grad_norm: float
    skipped: bool
    micro_batch_size: int | None = None
    dropped_micro_batches: int = 0
    lr: float | None = None
    info: dict[str, float] = field(default_factory=dict)


class Window:
    """One accumulation window: feed it micro-batch losses, then it steps the optimizer.

    ``total_items`` is the window's count of loss-bearing items; when it is not known up
    front, pass ``None`` and the gradient is normalized by the items seen, at the end.
    ``total_samples`` (the window's sample count) is handed to transforms that need it.
    """

    def __init__(
        self, engine: Accumulator, total_items: int | None, total_samples: int | None = None
    ) -> None:
        self.engine = engine
        self.total_items = total_items
        self.total_samples = total_samples
        self.params = engine.params
        self.isolate = engine.isolates_micro_batches
        self.acc: list[Tensor | None] = [None] * len(self.params)
        self.loss_total = torch.zeros((), dtype=torch.float64)
        self.items_seen = 0
        self.items_kept = 0
        self.samples = 0
        self.micro_batches = 0
        self.dropped = 0
        self.micro_info: dict[str, list[float]] = {}
        self.result: StepResult | None = None
        self.retain_graph = False
        self.offloaded = engine.offloaded
        for p in self.params:
            p.grad = None
        if self.offloaded is not None:
            self.offloaded.begin_window()
        for t in engine.transforms:
            t.begin_window(engine.model)

    def __enter__(self) -> Window:
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def _scale(self, task: str | None) -> float:
        """What a micro-batch's summed loss is multiplied by before backward."""
        return 1.0 / self.total_items if self.total_items else 1.0

    def backward(
        self, loss_sum: Tensor, items: int, samples: int = 0, task: str | None = None
    ) -> None:
        """Backpropagate one micro-batch's summed loss over ``items`` loss-bearing items.

        ``task`` names the task the loss belongs to in a multi-task window.
        """
        self.micro_batches += 1
        self.items_seen += items
        self.samples += samples
        drop_mode = self.engine.nonfinite == "drop_micro_batch"
        if drop_mode and not bool(torch.isfinite(loss_sum.detach())):
            self._drop(items, "non-finite loss")
            return
        scale = self._scale(task)
        scaled = loss_sum * scale
        scaler = self.engine.precision.scaler
        if scaler is not None:
            scaled = scaler.scale(scaled)
        scaled.backward(retain_graph=self.retain_graph)
        loss_scale = scale * (float(scaler.get_scale()) if scaler is not None else 1.0)
        ctx = MicroContext(
            index=self.micro_batches - 1,
            items=items,
            to_mean=1.0 / (loss_scale * items) if items else 0.0,
            samples=samples,
            loss_scale=loss_scale,
            window_items=self.total_items,
            window_samples=self.total_samples,
        )
        for t in self.engine.transforms:
            self._record(t.after_backward(self.params, ctx))
        if not self.isolate:
            self._keep(loss_sum, items, task)
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if drop_mode and scaler is None and not bool(torch.isfinite(total_norm(grads))):
            self._drop(items, "non-finite gradient")
            return
        self._keep(loss_sum, items, task)
        for t in self.engine.transforms:
            if t.isolates_micro_batches:
                self._record(t.micro(grads, ctx))
        self._accumulate(task)

    def _accumulate(self, task: str | None) -> None:
        """Move one micro-batch's gradient from ``p.grad`` into the accumulator."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.acc[i] is None:
                self.acc[i] = p.grad
            else:
                self.acc[i].add_(p.grad)
            p.grad = None

    def _gather(self) -> dict[str, float]:
        """Leave the window's normalized gradient in ``p.grad``."""
        if self.isolate:
            for p, g in zip(self.params, self.acc, strict=True):
                p.grad = g
            self.acc = [None] * len(self.params)
        grads = [p.grad for p in self.params if p.grad is not None]
        # Renormalize if the count was unknown up front or micro-batches were dropped.
        if self.items_kept and (self.total_items is None or self.items_kept != self.items_seen):
            factor = (self.total_items or 1) / self.items_kept
            if factor != 1.0:
                torch._foreach_mul_(grads, factor)
                if self.offloaded is not None:
                    self.offloaded.scale_(factor)
        return {}

    def _mean_loss(self) -> float:
        return float(self.loss_total / self.items_kept) if self.items_kept else math.nan

    def _record(self, info: dict[str, float]) -> None:
        for k, v in info.items():
            self.micro_info.setdefault(k, []).append(v)

    def _keep(self, loss_sum: Tensor, items: int, task: str | None) -> None:
        self.loss_total += loss_sum.detach().double().cpu()
        self.items_kept += items

    def _drop(self, items: int, why: str) -> None:
        self.dropped += 1
        log.warning("dropped micro-batch %d of the window: %s", self.micro_batches, why)
        for p in self.params:
            p.grad = None

    def abort(self) -> None:
        """Throw the window away: no step, gradients cleared, transforms closed."""
        self.acc = [None] * len(self.params)
        for p in self.params:
            p.grad = None
        if self.offloaded is not None:
            self.offloaded.begin_window()
        for t in self.engine.transforms:
            t.end_window()

    def finish(self) -> StepResult:
        """Normalize, unscale, run window transforms, and step (or skip) the optimizer."""
        eng = self.engine
        if self.total_items is not None and self.items_seen != self.total_items:
            self.abort()
            raise ValueError(
                f"the window was opened for {self.total_items} items but backward() "
                f"was given {self.items_seen}"
            )
        gathered = self._gather()
        grads = [p.grad for p in self.params if p.grad is not None]
        scaler = eng.precision.scaler
        if scaler is not None and grads:
            scaler.unscale_(eng.optimizer)
        norm = total_norm(grads)
        if self.offloaded is not None:
            norm = (norm.double() ** 2 + self.offloaded.norm_sq()).sqrt().float()
            grads = [*grads, self.offloaded.scale]  # uniform scaling reaches it too
        loss = self._mean_loss()
        reason = self._skip_reason(norm, loss, grads)
        info: dict[str, float] = {k: sum(v) / len(v) for k, v in self.micro_info.items()}
        info.update(gathered)
        if reason is None:
            for t in eng.transforms:
                info.update(t.window(grads, norm))
            if scaler is not None:
                scaler.step(eng.optimizer)
            else:
                eng.optimizer.step()
            eng.steps += 1
            if eng.scheduler is not None:
                eng.scheduler.step()
        else:
            eng.skipped_steps += 1
            log.warning("skipped optimizer step (window %d): %s", eng.windows, reason)
        if scaler is not None:
            scaler.update()
        eng.windows += 1
        eng.dropped_micro_batches += self.dropped
        for p in self.params:
            p.grad = None
        for t in eng.transforms:
            t.end_window()
        self.result = StepResult(
            step=eng.steps,
            loss=loss,
            items=self.items_kept,
            samples=self.samples,
            micro_batches=self.micro_batches,
            grad_norm=float(norm),
            skipped=reason is not None,
            dropped_micro_batches=self.dropped,
            lr=eng.current_lr(),
            info=info,
        )
        return self.result

    def _skip_reason(self, norm: Tensor, loss: float, grads: list[Tensor]) -> str | None:
        if not math.isfinite(loss):
            return "non-finite loss" if self.items_kept else "no loss-bearing items"
        if not grads:
            return "no gradients"
        if not bool(torch.isfinite(norm)):
            return "non-finite gradient"
        return None
