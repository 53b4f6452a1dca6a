"""The four ways to take a step that the PS-Clip experiment compares, and the race between them.

Every method is SGD with momentum 0.9 through the same engine, on the same K micro-batches:

* ``sgdm``: no clipping;
* ``global``: the accumulated window gradient clipped to a threshold (``ClipGlobal``);
* ``micro``: each micro-batch's mean gradient clipped before it is added (``ClipMicro``);
* ``psclip``: each sample's gradient clipped, then averaged (``ClipPerSample``: PS-Clip-SGD).

A threshold is a ``factor`` times the mean norm of what the method clips at the initial
weights (per-sample, micro-batch or window gradient norm, from ``reference_norms``), so
one grid of factors means the same for every method.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradaccum.engine import Accumulator, LossFn, StepResult
from gradaccum.transforms import ClipGlobal, ClipMicro, ClipPerSample, Transform

METHODS = ("sgdm", "global", "micro", "psclip")
MOMENTUM = 0.9
_NEVER = 1e30
"""A threshold no gradient reaches: the clipping transforms then only measure."""


def clip_transforms(method: str, threshold: float | None) -> list[Transform]:
    """The engine transforms of ``method`` at ``threshold`` (None for sgdm)."""
    if method == "sgdm":
        return []
    if threshold is None:
        raise ValueError(f"{method} needs a threshold")
    kinds = {"global": ClipGlobal, "micro": ClipMicro, "psclip": ClipPerSample}
    return [kinds[method](threshold)]


def make_engine(
    model: nn.Module,
    params: Sequence[Tensor],
    method: str,
    lr: float,
    threshold: float | None,
    micro_batch_size: int,
) -> Accumulator:
    """SGD with momentum through the engine, with ``method``'s clipping."""
    opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    transforms = clip_transforms(method, threshold)
    return Accumulator(model, opt, micro_batch_size=micro_batch_size, transforms=transforms)


def reference_norms(
    model: nn.Module,
    params: Sequence[Tensor],
    loss_fn: LossFn,
    batches: Sequence[Any],
    micro_batch_size: int,
) -> dict[str, float]:
    """Mean norm of the per-sample, micro-batch and window gradients at the current weights.

    Runs the engine at learning rate 0 with per-sample and micro-batch clipping that never
    clips (they report the norms they see), so the weights do not move.
    """
    opt = torch.optim.SGD(params, lr=0.0)
    probe = [ClipPerSample(_NEVER), ClipMicro(_NEVER)]
    engine = Accumulator(model, opt, micro_batch_size=micro_batch_size, transforms=probe)
    seen: dict[str, list[float]] = {"psclip": [], "micro": [], "global": []}
    for batch in batches:
        result = engine.step(batch, loss_fn)
        seen["psclip"].append(result.info["ps_grad_norm"])
        seen["micro"].append(result.info["micro_grad_norm"])
        seen["global"].append(result.grad_norm)
    return {m: statistics.fmean(v) for m, v in seen.items()}


def clipped(method: str, info: dict[str, float]) -> bool:
    """Whether ``method``'s clipping changed anything in a step, from the step's info."""
    if method == "psclip":
        return info.get("ps_clipped_frac", 0.0) > 0
    if method == "micro":
        return info.get("micro_clip_coef", 1.0) < 1
    if method == "global":
        return info.get("clip_coef", 1.0) < 1
    return False


@dataclass
class Contestant:
    """One method in a race: how it steps on a global batch and how it is evaluated."""

    step: Callable[[Any], StepResult]
    evaluate: Callable[[], float]


def race(
    contestants: dict[str, Contestant], batches: Sequence[Any], eval_every: int
) -> dict[str, Any]:
    """Every contestant steps on the same batches, one step each in turn (order reversed
    every step, so load on a shared machine hits them alike); each step is timed alone,
    evaluation is not.

    Returns ``curves`` (per method, rows of step, training seconds, metric), ``clipped``
    (per method, the fraction of steps its clipping changed) and ``final_loss``.
    """
    names = list(contestants)
    clock = dict.fromkeys(names, 0.0)
    active = dict.fromkeys(names, 0)
    losses = dict.fromkeys(names, float("nan"))
    curves = {m: [[0, 0.0, contestants[m].evaluate()]] for m in names}
    for i, batch in enumerate(batches, start=1):
        for m in names if i % 2 else reversed(names):
            start = time.perf_counter()
            result = contestants[m].step(batch)
            clock[m] += time.perf_counter() - start
            active[m] += clipped(m, result.info)
            losses[m] = result.loss
        if i % eval_every == 0 or i == len(batches):
            for m in names:
                curves[m].append([i, clock[m], contestants[m].evaluate()])
    steps = max(1, len(batches))
    return {
        "curves": curves,
        "clipped": {m: n / steps for m, n in active.items()},
        "final_loss": losses,
    }
