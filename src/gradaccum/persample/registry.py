"""The registry of per-layer rules: module kind -> how to get its per-sample gradients.

A rule runs during backward, as soon as its layer's output gradient is known, with the
module, the input it saw in the forward pass (batch first), that output gradient (batch
first) and the names of its parameters being trained; it returns a ``PerSample``. Rules
are registered by module type, or by class name (bare, or ``module.QualName``) for
classes we should not import; lookup walks the module's class hierarchy (isinstance), so
the most specific registration wins.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

Rule = Callable[[nn.Module, Tensor, Tensor, frozenset[str]], "PerSample"]

_BY_TYPE: dict[type, Rule] = {}
_BY_NAME: dict[str, Rule] = {}


class PerSample(ABC):
    """One layer's per-sample gradients for one micro-batch, in whatever form is cheapest."""

    sq_norms: Tensor
    """(B,) squared L2 norm of each sample's gradient of this layer's trained parameters."""

    @abstractmethod
    def weighted(self, c: Tensor) -> dict[str, Tensor]:
        """``sum_i c[i] * grad_i`` for each trained parameter, by name, in its shape."""

    def rows(self, name: str, index: Tensor) -> Tensor:
        """Rows ``index[b]`` (B, K) of sample b's gradient of 2-D parameter ``name``: (B, K, D).

        Only needed for a parameter tied to an embedding (the per-sample cross term).
        """
        raise NotImplementedError(f"{type(self).__name__} gives no per-sample rows")

    def cross(self, name: str, other: PerSample, other_name: str) -> Tensor | None:
        """(B,) per-sample inner product with ``other``'s gradient of the same tensor, if known."""
        return None


def register(*kinds: type | str) -> Callable[[Rule], Rule]:
    """Decorator: use the decorated rule for modules of these types or class names."""

    def deco(rule: Rule) -> Rule:
        for kind in kinds:
            if isinstance(kind, str):
                _BY_NAME[kind] = rule
            else:
                _BY_TYPE[kind] = rule
        return rule

    return deco


def rule_for(module: nn.Module) -> Rule | None:
    """The rule of the most specific registered class in ``module``'s hierarchy, if any.

    A rule describes its class's ``forward``, so a subclass that overrides ``forward``
    does not inherit it: such a module has no rule until one is registered for it.
    """
    overridden = False
    for cls in type(module).__mro__:
        rule = _BY_TYPE.get(cls) or _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        rule = rule or _BY_NAME.get(cls.__name__)
        if rule is not None:
            return None if overridden else rule
        overridden = overridden or "forward" in vars(cls)
    return None


def missing_rules(modules: Iterable[nn.Module]) -> list[str]:
    """Sorted names of the module types among ``modules`` that have no rule."""
    return sorted({type(m).__name__ for m in modules if rule_for(m) is None})


class Explicit(PerSample):
    """Per-sample gradients held explicitly: ``grads[name]`` is (B, *param_shape)."""

    def __init__(self, grads: dict[str, Tensor]) -> None:
        self.grads = grads
        first = next(iter(grads.values()))
        self.sq_norms = first.new_zeros(first.shape[0])
        for g in grads.values():
            self.sq_norms += torch.linalg.vector_norm(g.flatten(1), dim=1).square()

    def weighted(self, c: Tensor) -> dict[str, Tensor]:
        return {n: torch.tensordot(c.to(g), g, dims=1) for n, g in self.grads.items()}


def as_float(t: Tensor) -> Tensor:
    """``t`` in at least fp32, so norms of half-precision activations do not lose bits."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
