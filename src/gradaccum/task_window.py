"""Multi-task windows: each task's gradient accumulates in its own buffer over the window,
then a combiner (weighted sum, PCGrad, CAGrad, GradNorm, GCond) turns the task gradients
into the one gradient the optimizer sees.

Memory: one flat gradient-sized buffer per task (``task_buffer_dtype``, fp32 by default;
bf16 halves it at some precision cost), on top of the model's own gradients.
Each task's gradient is normalized by that task's own count of loss-bearing items in the
micro-batches it ran on, so every task gradient is exact for its share of the window.

Where nothing needs to see a micro-batch's gradient alone (no isolating transform, no
dropping of non-finite micro-batches) and the buffers have the parameters' dtype, each
parameter's ``.grad`` is pointed at its slice of the task's buffer before backward, so
autograd accumulates in place and no gradient is copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from gradaccum.window import Window

if TYPE_CHECKING:
    from gradaccum.engine import Accumulator


class TaskLoss(Protocol):
    """A multi-task loss: summed losses per task, and per-task item counts."""

    tasks: Sequence[str]

    def count(self, micro_batch: Any) -> dict[str, int]: ...

    def __call__(
        self, model: nn.Module, micro_batch: Any, tasks: Sequence[str]
    ) -> dict[str, Tensor]: ...


def flat_offsets(params: Sequence[Tensor]) -> list[int]:
    """Start of each parameter in the flattened gradient vector (plus the total at the end)."""
    offsets = [0]
    for p in params:
        offsets.append(offsets[-1] + p.numel())
    return offsets


def shared_slice(params: Sequence[Tensor], shared: Sequence[Tensor]) -> slice:
    """Columns of the flat gradient that belong to ``shared`` (which must be contiguous)."""
    offsets = flat_offsets(params)
    index = [i for i, p in enumerate(params) if any(p is s for s in shared)]
    if len(index) != len(shared) or index != list(range(index[0], index[0] + len(index))):
        raise ValueError("shared_params must be consecutive parameters of the optimizer")
    return slice(offsets[index[0]], offsets[index[-1] + 1])


class TaskWindow(Window):
    """A window whose backward calls each name a task; combined at the end."""

    def __init__(
        self, engine: Accumulator, task_totals: dict[str, int], total_samples: int | None
    ) -> None:
        super().__init__(engine, None, total_samples)
        self.isolate = True
        self.names = list(task_totals)
        self.task_totals = task_totals
        self.offsets = flat_offsets(self.params)
        device = self.params[0].device
        shape = (len(self.names), self.offsets[-1])
        self.buffers = torch.zeros(shape, dtype=engine.task_buffer_dtype, device=device)
        self.task_loss = dict.fromkeys(self.names, 0.0)
        self.task_items = dict.fromkeys(self.names, 0)
        same = all(p.dtype == self.buffers.dtype and p.device == device for p in self.params)
        self.in_place = same and not engine.isolates_micro_batches
        self._views: dict[str, list[Tensor]] = {}

    def _task_views(self, task: str) -> list[Tensor]:
        """Each parameter's slice of ``task``'s buffer, shaped like the parameter."""
        if task not in self._views:
            row = self.buffers[self.names.index(task)]
            self._views[task] = [
                row[start:end].view_as(p)
                for p, start, end in zip(self.params, self.offsets, self.offsets[1:], strict=False)
            ]
        return self._views[task]

    def backward(
        self, loss_sum: Tensor, items: int, samples: int = 0, task: str | None = None
    ) -> None:
        if self.in_place and task in self.task_totals:
            for p, view in zip(self.params, self._task_views(task), strict=True):
                p.grad = view
        super().backward(loss_sum, items, samples, task)

    def _scale(self, task: str | None) -> float:
        if task not in self.task_totals:
            raise ValueError(f"backward(task=...) must name one of {self.names}, got {task!r}")
        total = self.task_totals[task]
        return 1.0 / total if total else 0.0

    def _keep(self, loss_sum: Tensor, items: int, task: str | None) -> None:
        assert task is not None
        self.task_loss[task] += float(loss_sum.detach())
        self.task_items[task] += items
        self.items_kept += items

    def _accumulate(self, task: str | None) -> None:
        if self.in_place:  # backward already added into the buffer
            for p in self.params:
                p.grad = None
            return
        row = self.buffers[self.names.index(task)]
        for p, start, end in zip(self.params, self.offsets, self.offsets[1:], strict=False):
            if p.grad is not None:
                row[start:end].add_(p.grad.reshape(-1))
                p.grad = None

    def _task_means(self) -> dict[str, float]:
        return {k: self.task_loss[k] / n for k, n in self.task_items.items() if n}

    def _mean_loss(self) -> float:
        means = self._task_means()
        return sum(means.values()) if len(means) == len(self.names) else float("nan")

    def _gather(self) -> dict[str, float]:
        from gradaccum.multitask.base import TaskGrads

        eng = self.engine
        scaler = eng.precision.scaler
        amp = float(scaler.get_scale()) if scaler is not None else 1.0
        grads = self.buffers.float()  # a copy only if the buffers are not fp32
        if amp != 1.0:
            grads = grads / amp  # combiners see real, unscaled gradients
        means = self._task_means()
        tg = TaskGrads(
            names=self.names, grads=grads, losses=means, shared=eng.shared_slice, step=eng.steps
        )
        combined, info = eng.combiner.combine(tg)
        if amp != 1.0:
            combined = combined * amp  # the engine unscales once, as for a single task
        for p, start, end in zip(self.params, self.offsets, self.offsets[1:], strict=False):
            p.grad = combined[start:end].view_as(p).to(p.dtype)
        self.buffers, self._views = torch.empty(0), {}
        info.update({f"loss/{k}": v for k, v in means.items()})
        return info
