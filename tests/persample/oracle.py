"""Per-sample gradients by ``torch.func`` (vmap over vjp), to check the per-layer rules."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from gradaccum.persample import rule_for


def func_per_sample(module: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    """Sample b's gradient of <module(x_b), g_b> for each trainable parameter: (B, *shape)."""
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}

    def one(x_b: Tensor, g_b: Tensor) -> dict[str, Tensor]:
        _, pullback = vjp(lambda p: functional_call(module, p, (x_b[None],)), params)
        return pullback(g_b[None])[0]

    return vmap(one)(x, g)


def rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_rule(module: nn.Module, x: Tensor, tol: float = 1e-5, seed: int = 0):
    """The module's rule against torch.func: per-sample squared norms and weighted sums."""
    gen = torch.Generator().manual_seed(seed)
    out = module(x)
    g = torch.randn(out.shape, generator=gen)
    want = func_per_sample(module, x, g)
    rule = rule_for(module)
    assert rule is not None, type(module).__name__
    ps = rule(module, x, g, frozenset(want))
    want_sq = sum(w.flatten(1).square().sum(1) for w in want.values())
    assert rel(ps.sq_norms, want_sq) <= tol
    c = torch.rand(x.shape[0], generator=gen)
    got = ps.weighted(c)
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].shape == w.shape[1:]
        assert rel(got[name], torch.tensordot(c, w, dims=1)) <= tol
    return ps, want
