"""One optimizer step: plan -> micro-batches -> backward -> boundary transforms -> step.

The loss contract that makes accumulation exact: ``loss_fn(model, micro_batch)`` returns
the SUM of the per-item losses of its loss-bearing items (samples, or tokens whose label
is not ignored), and a count function gives that number of items from the data alone.
The engine counts the whole window first and divides every micro-batch loss by the
window's total before backward, so the accumulated gradient is the gradient of the mean
over the whole global batch however it is split. ``Accumulator.step`` runs a whole window;
``Accumulator.window`` is the same machinery for users who keep their own loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradaccum.errors import UserError
from gradaccum.memory.auto_batch import find_micro_batch_size, optimizer_state_bytes
from gradaccum.memory.oom import is_oom
from gradaccum.memory.peak import PeakMeter
from gradaccum.plan import Batch, CountFn, SizeFn, batch_len, make_plan, slice_batch
from gradaccum.precision import make_precision
from gradaccum.transforms.base import MicroContext, Transform, total_norm

log = logging.getLogger("gradaccum")

LossFn = Callable[[nn.Module, Batch], Tensor]
NONFINITE_MODES = ("skip_step", "drop_micro_batch")


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
        for p in self.params:
            p.grad = None
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


class Accumulator:
    """Runs optimizer steps over global batches split into micro-batches, exactly.

    Give either ``micro_batch_size`` (an int, or ``"auto"`` with ``memory_budget`` bytes)
    or ``token_budget`` (with ``size_fn``). ``collate`` turns a list slice of samples into
    a micro-batch; ``count_fn`` counts a micro-batch's loss-bearing items (default: the
    loss function's ``count`` method if it has one, else the number of samples).

    Multi-task: with a ``combiner`` (see ``gradaccum.multitask``) the loss is a
    ``TaskLoss`` returning one summed loss per task; each task's gradient accumulates in
    its own buffer and the combiner merges them before the step (``task_window.py``).
    ``shared_params`` names the last shared layer (GradNorm); the combiner's ``schedule``
    decides which tasks each micro-batch runs (all of them, or one in stochastic mode).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        scheduler: Any = None,
        micro_batch_size: int | str | None = None,
        token_budget: int | None = None,
        size_fn: SizeFn | None = None,
        collate: Callable[[Batch], Batch] | None = None,
        count_fn: CountFn | None = None,
        transforms: Sequence[Transform] = (),
        precision: str = "fp32",
        nonfinite: str = "skip_step",
        memory_budget: int | None = None,
        combiner: Any = None,
        shared_params: Sequence[Tensor] | None = None,
        task_buffer_dtype: torch.dtype = torch.float32,
    ) -> None:
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
        if micro_batch_size == "auto" and memory_budget is None:
            raise ValueError("micro_batch_size='auto' needs a memory_budget in bytes")
        if micro_batch_size is not None and token_budget is not None:
            raise ValueError("give micro_batch_size or token_budget, not both")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.auto = micro_batch_size == "auto"
        self.micro_batch_size: int | None = None if self.auto else micro_batch_size  # type: ignore[assignment]
        self.token_budget = token_budget
        self.size_fn = size_fn
        self.collate = collate
        self.count_fn = count_fn
        self.transforms = list(transforms)
        self.nonfinite = nonfinite
        self.memory_budget = memory_budget
        self.params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.precision = make_precision(precision, self.device.type)
        self.combiner = combiner
        self.task_buffer_dtype = task_buffer_dtype
        self.shared_slice = None
        if shared_params is not None:
            from gradaccum.task_window import shared_slice

            self.shared_slice = shared_slice(self.params, shared_params)
        self.steps = 0
        self.windows = 0
        self.skipped_steps = 0
        self.dropped_micro_batches = 0
        self.oom_backoffs = 0

    @property
    def isolates_micro_batches(self) -> bool:
        """Whether each micro-batch's gradient must be seen alone before it is added."""
        drop = self.nonfinite == "drop_micro_batch" and self.precision.scaler is None
        return drop or any(t.isolates_micro_batches for t in self.transforms)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The forward-pass autocast context of this engine's precision."""
        return self.precision.autocast()

    def window(self, total_items: int | None = None, total_samples: int | None = None) -> Window:
        """A window for a hand-written micro-batch loop (use as a context manager)."""
        return Window(self, total_items, total_samples)

    def current_lr(self) -> float | None:
        groups = self.optimizer.param_groups
        return float(groups[0]["lr"]) if groups and "lr" in groups[0] else None

    def step(self, batch: Batch, loss_fn: LossFn) -> StepResult:
        """One optimizer step over the global ``batch``; retries at half size on OOM."""
        count_fn = self.count_fn or getattr(loss_fn, "count", None) or batch_len
        self.resolve_micro_batch_size(batch, loss_fn)
        while True:
            snapshot = _snapshot(self.model)
            try:
                result = self._run(batch, loss_fn, count_fn)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                _restore(self.model, snapshot)
                self._back_off(exc)
                continue
            result.micro_batch_size = self.micro_batch_size
            return result

    def _run(self, batch: Batch, loss_fn: LossFn, count_fn: CountFn) -> StepResult:
        if self.combiner is not None:
            return self._run_tasks(batch, loss_fn)
        plan = make_plan(
            batch,
            count_fn,
            micro_batch_size=self.micro_batch_size,
            token_budget=self.token_budget,
            size_fn=self.size_fn,
            collate=self.collate,
        )
        window = Window(self, plan.total, sum(plan.sizes))
        try:
            for micro, items, size in zip(plan.micro_batches, plan.counts, plan.sizes, strict=True):
                with self.autocast():
                    loss = loss_fn(self.model, micro)
                window.backward(loss, items, samples=size)
        except BaseException:
            window.abort()
            raise
        return window.finish()

    def _run_tasks(self, batch: Batch, loss_fn: Any) -> StepResult:
        from gradaccum.task_window import TaskWindow

        plan = make_plan(
            batch,
            loss_fn.count,
            micro_batch_size=self.micro_batch_size,
            token_budget=self.token_budget,
            size_fn=self.size_fn,
            collate=self.collate,
        )
        names = list(loss_fn.tasks)
        k = len(plan.micro_batches)
        schedule = self.combiner.schedule(k, names)
        assigned = [names] * k if schedule is None else [[t] for t in schedule]
        totals = {
            t: sum(c[t] for c, ts in zip(plan.counts, assigned, strict=True) if t in ts)
            for t in names
        }
        batch_norms = _batch_norms(self.model) if getattr(self.combiner, "bn_eval", False) else []
        modes = [m.training for m in batch_norms]
        window = TaskWindow(self, totals, sum(plan.sizes))
        try:
            for m in batch_norms:
                m.eval()
            for micro, counts, size, tasks in zip(
                plan.micro_batches, plan.counts, plan.sizes, assigned, strict=True
            ):
                with self.autocast():
                    losses = loss_fn(self.model, micro, tasks)
                for i, task in enumerate(tasks):
                    window.retain_graph = i < len(tasks) - 1
                    window.backward(losses[task], counts[task], size if i == 0 else 0, task)
        except BaseException:
            window.abort()
            raise
        finally:
            for m, mode in zip(batch_norms, modes, strict=True):
                m.train(mode)
        return window.finish()

    def _back_off(self, exc: BaseException) -> None:
        if self.token_budget is not None and self.token_budget > 1:
            self.token_budget //= 2
            new = f"token budget {self.token_budget}"
        elif self.micro_batch_size is not None and self.micro_batch_size > 1:
            self.micro_batch_size //= 2
            new = f"micro-batch size {self.micro_batch_size}"
        else:
            raise UserError(
                "out of memory even with one sample per micro-batch: use a shorter "
                "sequence length, lower precision, or a machine with more memory"
            ) from exc
        self.oom_backoffs += 1
        log.warning("out of memory; retrying the same global batch with %s", new)

    def resolve_micro_batch_size(self, batch: Batch, loss_fn: LossFn) -> int | None:
        """With ``micro_batch_size="auto"``, measure and fix the size now (else a no-op).

        Probing leaves no trace: gradients, buffers and RNG states are restored.
        """
        if self.auto and self.micro_batch_size is None:
            self.micro_batch_size = self._probe_micro_batch_size(batch, loss_fn)
        return self.micro_batch_size

    def _probe_micro_batch_size(self, batch: Batch, loss_fn: LossFn) -> int:
        """Measure probe steps and pick the largest micro-batch under the memory budget."""
        assert self.memory_budget is not None

        def probe(b: int) -> int:
            micro = slice_batch(batch, 0, b)
            if self.collate is not None:
                micro = self.collate(micro)
            snapshot = _snapshot(self.model)
            try:
                with PeakMeter(self.device) as meter:
                    with self.autocast():
                        loss = loss_fn(self.model, micro)
                    loss.backward()
                    del loss
            except Exception as exc:
                if not is_oom(exc):
                    raise
                return math.inf  # type: ignore[return-value]
            finally:
                for p in self.params:
                    p.grad = None
                _restore(self.model, snapshot)
            return meter.peak

        probe(1)  # warm-up: first-call allocations (kernels, thread pools) persist anyway
        reserve = optimizer_state_bytes(self.optimizer)
        size = find_micro_batch_size(probe, batch_len(batch), self.memory_budget, reserve)
        log.info("micro-batch size %d fits the memory budget", size)
        return size

    def state_dict(self) -> dict[str, Any]:
        """Counters and the chosen micro-batch size, for exact resume."""
        scaler = self.precision.scaler
        return {
            "steps": self.steps,
            "windows": self.windows,
            "skipped_steps": self.skipped_steps,
            "dropped_micro_batches": self.dropped_micro_batches,
            "oom_backoffs": self.oom_backoffs,
            "micro_batch_size": self.micro_batch_size,
            "token_budget": self.token_budget,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "combiner": self.combiner.state_dict() if self.combiner is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("steps", "windows", "skipped_steps", "dropped_micro_batches", "oom_backoffs"):
            setattr(self, key, int(state[key]))
        self.micro_batch_size = state["micro_batch_size"]
        self.token_budget = state["token_budget"]
        if state.get("scaler") and self.precision.scaler is not None:
            self.precision.scaler.load_state_dict(state["scaler"])
        if state.get("combiner") is not None and self.combiner is not None:
            self.combiner.load_state_dict(state["combiner"])


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@dataclass
class _Snapshot:
    rng: Tensor
    cuda_rng: list[Tensor] | None
    buffers: dict[str, Tensor]


def _snapshot(model: nn.Module) -> _Snapshot:
    """RNG states and buffers, so a retried or probed pass leaves no trace."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    return _Snapshot(torch.get_rng_state(), cuda, buffers)


def _restore(model: nn.Module, snap: _Snapshot) -> None:
    torch.set_rng_state(snap.rng)
    if snap.cuda_rng is not None:
        torch.cuda.set_rng_state_all(snap.cuda_rng)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(snap.buffers[name])
