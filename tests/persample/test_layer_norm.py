"""The layer-norm rule against torch.func."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.persample.oracle import check_rule


@pytest.mark.parametrize(
    ("shape", "normalized", "bias"),
    [
        ((4, 10), 10, True),
        ((3, 6, 10), 10, True),
        ((3, 6, 10), 10, False),
        ((3, 5, 4, 6), (4, 6), True),
    ],
)
def test_layer_norm(shape, normalized, bias):
    torch.manual_seed(0)
    layer = nn.LayerNorm(normalized, bias=bias)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    check_rule(layer, torch.randn(shape) * 3 + 1)
