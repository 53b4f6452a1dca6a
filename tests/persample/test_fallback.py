"""The torch.func fallback for layers with no rule, against torch.func on the layer."""

from __future__ import annotations

import torch
from torch import nn

from gradaccum.persample.fallback import fallback
from tests.persample.oracle import func_per_sample, rel


def test_fallback_gives_the_per_sample_gradients():
    torch.manual_seed(0)
    layer = nn.PReLU(4)
    x = torch.randn(3, 4, 5)
    g = torch.randn(3, 4, 5)
    want = func_per_sample(layer, x, g)
    ps = fallback(layer, ((x,), {}), g, frozenset({"weight"}))
    assert rel(ps.sq_norms, want["weight"].square().sum(1)) <= 1e-6
    c = torch.rand(3)
    assert rel(ps.weighted(c)["weight"], c @ want["weight"]) <= 1e-6
