"""The exact, slow fallback for a module kind with no rule: ``torch.func`` per sample.

Per module, not per model: the module is replayed on each sample alone (``vmap`` over
the batch, each sample given a batch dimension of one) through ``functional_call``, and
``vjp`` with that sample's output gradient gives its parameter gradients, held explicitly
(B copies of the module's parameters). It is exact only for modules that treat samples
independently (not BatchNorm in training mode, for instance) and return one tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from gradaccum.persample.registry import Explicit, PerSample


def fallback(
    module: nn.Module,
    inputs: tuple[tuple[Any, ...], dict[str, Any]],
    g: Tensor,
    names: frozenset[str],
) -> PerSample:
    """Per-sample gradients of ``module``'s trained parameters by replaying it per sample."""
    args = tuple(x.detach() if isinstance(x, Tensor) else x for x in inputs[0])
    kwargs = inputs[1]
    b = g.shape[0]
    params = {n: p.detach() for n, p in module.named_parameters(recurse=False) if n in names}
    dims = tuple(0 if isinstance(x, Tensor) and x.dim() and x.shape[0] == b else None for x in args)

    def one(sample_args: tuple[Any, ...], g_b: Tensor) -> dict[str, Tensor]:
        batched = tuple(
            x.unsqueeze(0) if d == 0 else x for x, d in zip(sample_args, dims, strict=True)
        )

        def run(p: dict[str, Tensor]) -> Tensor:
            return functional_call(module, p, batched, kwargs)

        _, pullback = vjp(run, params)
        return pullback(g_b.unsqueeze(0))[0]

    with torch.enable_grad():
        grads = vmap(one, in_dims=(dims, 0))(args, g)
    return Explicit(grads)
