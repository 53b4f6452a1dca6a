"""Capture, within the one ordinary backward, what the per-layer rules need; combine them.

``attach`` gives every module that owns trained parameters its rule (or the fallback),
stops its parameters requiring grad (so autograd builds no unweighted gradient for them),
and hooks it: the forward hook keeps the module's input and hooks its output's gradient,
first making that output require grad if nothing upstream does, so gradient still flows
through a model whose only trained layers are handled here. Each rule runs as soon as its
layer's output gradient arrives. After backward, ``take`` hands over the micro-batch's
per-layer results: their per-sample squared norms add up across layers (plus cross terms
for a parameter two modules share), and ``add_weighted`` adds ``sum_i c_i grad_i`` to
each parameter's ``.grad``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gradaccum.errors import UserError
from gradaccum.persample.fallback import fallback
from gradaccum.persample.registry import PerSample, Rule, missing_rules, rule_for


@dataclass(eq=False)
class Layer:
    """A module with trained parameters and the rule that gives their per-sample gradients."""

    module: nn.Module
    name: str
    rule: Rule | None
    """None: the ``torch.func`` fallback."""
    names: frozenset[str]

    @property
    def label(self) -> str:
        return f"{self.name} ({type(self.module).__name__})"


def _flowing(output: Tensor) -> Tensor:
    """``output`` made to require grad, as a non-leaf so in-place ops after it still work."""
    anchor = torch.zeros((), dtype=output.dtype, device=output.device, requires_grad=True)
    return output + anchor


@dataclass(eq=False)
class _Call:
    inputs: Any
    version: int | None
    forward: int


@dataclass
class Collected:
    """One micro-batch's per-layer results."""

    results: list[tuple[Layer, PerSample]]
    shared: list[list[tuple[Layer, str]]] = field(default_factory=list)

    def sq_norms(self) -> Tensor:
        """(B,) squared norm of each sample's whole gradient, cross terms included."""
        device = self.results[0][1].sq_norms.device
        sq = sum(ps.sq_norms.to(device) for _, ps in self.results)
        assert isinstance(sq, Tensor)
        found = {id(layer): ps for layer, ps in self.results}
        for owners in self.shared:
            present = [(layer, n, found[id(layer)]) for layer, n in owners if id(layer) in found]
            for (la, na, pa), (lb, nb, pb) in itertools.combinations(present, 2):
                cross = pa.cross(na, pb, nb)
                cross = pb.cross(nb, pa, na) if cross is None else cross
                if cross is None:
                    raise UserError(
                        f"per-sample clipping has no rule for a parameter shared by "
                        f"{la.label} and {lb.label}"
                    )
                sq = sq + 2 * cross.to(device)
        return sq.clamp_min(0)

    def add_weighted(self, c: Tensor) -> None:
        """``p.grad += sum_i c_i grad_i`` for every trained parameter of every layer."""
        for layer, ps in self.results:
            for name, grad in ps.weighted(c).items():
                p = getattr(layer.module, name)
                grad = grad.to(p.dtype)
                if p.grad is None:
                    p.grad = grad
                else:
                    p.grad.add_(grad)


class Collector:
    """Per-sample hooks on every module of ``model`` that owns trained parameters."""

    def __init__(self, model: nn.Module, allow_fallback: bool = False) -> None:
        self.model = model
        self.layers: list[Layer] = []
        owners: dict[int, list[tuple[Layer, str]]] = {}
        trained = []
        for name, module in model.named_modules():
            names = frozenset(
                n for n, p in module.named_parameters(recurse=False) if p.requires_grad
            )
            if names:
                trained.append(module)
                layer = Layer(module, name or "model", rule_for(module), names)
                self.layers.append(layer)
                for n in names:
                    owners.setdefault(id(getattr(module, n)), []).append((layer, n))
        missing = missing_rules(trained)
        if missing and not allow_fallback:
            raise UserError(
                f"per-sample clipping has no rule for {', '.join(missing)}: register one in "
                "gradaccum.persample, or pass allow_fallback=True for an exact, slow fallback"
            )
        self.shared = [o for o in owners.values() if len(o) > 1]
        self.handles: list[RemovableHandle] = []
        self.batch: int | None = None
        self.seen: set[int] = set()
        self.forwards = 0
        self.backward_of: set[int] = set()
        self.results: list[tuple[Layer, PerSample]] = []
        self.replaying = False

    def attach(self) -> None:
        """Install the hooks and stop autograd from building the handled gradients."""
        self.handles.append(self.model.register_forward_pre_hook(self._start, with_kwargs=True))
        for layer in self.layers:
            hook = functools.partial(self._forward, layer)
            self.handles.append(layer.module.register_forward_hook(hook, with_kwargs=True))
            for n in layer.names:
                getattr(layer.module, n).requires_grad_(False)

    def detach(self) -> None:
        """Remove the hooks and make the handled parameters require grad again."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for layer in self.layers:
            for n in layer.names:
                getattr(layer.module, n).requires_grad_(True)
        self.results.clear()

    def take(self) -> Collected:
        """The results of the micro-batch just backpropagated; the collector starts afresh."""
        if len(self.backward_of) > 1:
            raise UserError(
                f"one backward went through {len(self.backward_of)} forward passes of the "
                "model: per-sample clipping needs one forward per micro-batch"
            )
        collected = Collected(self.results, self.shared)
        self.results, self.seen, self.backward_of, self.batch = [], set(), set(), None
        return collected

    def _start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.forwards += 1
        self.seen = set()
        first = next((x for x in (*args, *kwargs.values()) if isinstance(x, Tensor)), None)
        self.batch = first.shape[0] if first is not None and first.dim() else None

    def _forward(
        self, layer: Layer, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> Tensor | None:
        if self.replaying or not torch.is_grad_enabled():
            return None
        if not isinstance(output, Tensor):
            raise UserError(f"per-sample clipping needs {layer.label} to return one tensor")
        if id(layer) in self.seen:
            raise UserError(
                f"{layer.label} ran twice in one forward pass: per-sample clipping needs each "
                "trained module to run once per micro-batch"
            )
        self.seen.add(id(layer))
        batch = self.batch if self.batch is not None else output.shape[0]
        out = output if output.requires_grad else _flowing(output)
        if layer.rule is None:
            call = _Call((args, kwargs), None, self.forwards)
        else:
            if not args or not isinstance(args[0], Tensor):
                raise UserError(f"per-sample clipping needs {layer.label} to take its input first")
            x = args[0].detach()
            if out.shape[0] == 1 and batch > 1:
                out = out.expand(batch, *out.shape[1:])  # a batch-shared input, e.g. positions
                x = x.expand(batch, *x.shape[1:]) if x.shape[0] == 1 else x
            call = _Call(x, x._version, self.forwards)
        if out.shape[0] != batch:
            raise UserError(
                f"{layer.label} gave an output of leading size {out.shape[0]}, not the batch "
                f"size {batch}: per-sample clipping needs batch-first layers"
            )
        out.register_hook(functools.partial(self._backward, layer, call))
        return out if out is not output else None

    def _backward(self, layer: Layer, call: _Call, g: Tensor) -> None:
        inputs, call.inputs = call.inputs, None
        self.backward_of.add(call.forward)
        if call.version is not None and inputs._version != call.version:
            raise UserError(
                f"the input of {layer.label} was changed in place after its forward pass; "
                "per-sample clipping needs it intact"
            )
        if layer.rule is not None:
            result = layer.rule(layer.module, inputs, g, layer.names)
        else:
            self.replaying = True
            try:
                result = fallback(layer.module, inputs, g, layer.names)
            finally:
                self.replaying = False
        self.results.append((layer, result))
