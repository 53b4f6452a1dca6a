"""Multi-task combiners: N task gradients of a window in, one gradient out."""

from __future__ import annotations

from typing import Any

from gradaccum.errors import UserError
from gradaccum.multitask.base import Combiner, TaskGrads
from gradaccum.multitask.cagrad import CAGrad
from gradaccum.multitask.gcond import GCond, stochastic_schedule
from gradaccum.multitask.gradnorm import GradNorm
from gradaccum.multitask.linear import WeightedSum
from gradaccum.multitask.pcgrad import PCGrad

COMBINERS: dict[str, type[Combiner]] = {
    "linear": WeightedSum,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "gradnorm": GradNorm,
    "gcond": GCond,
}


def make_combiner(name: str, **kw: Any) -> Combiner:
    """The combiner called ``name`` (linear, pcgrad, cagrad, gradnorm, gcond), built with ``kw``."""
    if name not in COMBINERS:
        raise UserError(f"unknown multi-task combiner {name!r}: use one of {', '.join(COMBINERS)}")
    try:
        return COMBINERS[name](**kw)
    except (TypeError, ValueError) as err:
        raise UserError(f"combiner {name}: {err}") from None


__all__ = [
    "COMBINERS",
    "CAGrad",
    "Combiner",
    "GCond",
    "GradNorm",
    "PCGrad",
    "TaskGrads",
    "WeightedSum",
    "make_combiner",
    "stochastic_schedule",
]
