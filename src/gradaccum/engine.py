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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradaccum.errors import UserError
from gradaccum.memory.auto_batch import find_micro_batch_size, optimizer_state_bytes
from gradaccum.memory.oom import is_oom
from gradaccum.memory.peak import PeakMeter, bytes_in_use
from gradaccum.offloaded import OffloadedGradients
from gradaccum.plan import Batch, CountFn, SizeFn, batch_len, make_plan, slice_batch
from gradaccum.precision import make_precision
from gradaccum.transforms.base import Transform
from gradaccum.window import StepResult, Window

log = logging.getLogger("gradaccum")

LossFn = Callable[[nn.Module, Batch], Tensor]
NONFINITE_MODES = ("skip_step", "drop_micro_batch")


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
        offloaded: OffloadedGradients | None = None,
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
        self.offloaded = offloaded
        if offloaded is not None:
            self._check_offloaded()

    def _check_offloaded(self) -> None:
        """Offloaded gradients are never in ``p.grad``: refuse what would need them there."""
        uniform = all(t.scales_uniformly for t in self.transforms)
        if self.combiner is not None or self.isolates_micro_batches or not uniform:
            raise ValueError(
                "offloaded gradients work with global clipping only: no multi-task combiner, "
                "no micro-batch or per-sample transforms, nonfinite='skip_step'"
            )
        if self.precision.scaler is not None:
            raise ValueError("offloaded gradients do not support fp16 loss scaling; use bf16")

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
                if self.offloaded is not None:
                    self.offloaded.begin_window()
                _restore(self.model, snapshot)
            return meter.peak

        probe(1)  # warm-up: first-call allocations (kernels, thread pools) persist anyway
        reserve = optimizer_state_bytes(self.optimizer)
        floor = bytes_in_use(self.device)  # never probe a size predicted to break the budget
        size = find_micro_batch_size(
            probe, batch_len(batch), self.memory_budget, reserve, floor=floor
        )
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
            "transforms": [t.state_dict() for t in self.transforms],
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
        saved = state.get("transforms") or []
        if saved and len(saved) != len(self.transforms):  # e.g. --clip changed with --force
            log.warning("transform state not restored: saved for %d transforms", len(saved))
            saved = []
        for transform, transform_state in zip(self.transforms, saved, strict=False):
            if transform_state:
                transform.load_state_dict(transform_state)


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
