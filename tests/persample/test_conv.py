"""The convolution rule (unfold, then linear) against torch.func."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.persample.oracle import check_rule


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"stride": 2, "padding": 1, "dilation": 2},
        {"groups": 2, "padding": "same", "bias": False},
        {"padding": 2, "padding_mode": "reflect"},
        {"padding": 1, "padding_mode": "circular", "stride": 3},
    ],
)
def test_conv2d(kwargs):
    torch.manual_seed(0)
    check_rule(nn.Conv2d(4, 6, 3, **kwargs), torch.randn(3, 4, 9, 8))


@pytest.mark.parametrize(
    "kwargs", [{}, {"stride": 2, "padding": 3}, {"groups": 2, "dilation": 2, "padding": "same"}]
)
def test_conv1d(kwargs):
    torch.manual_seed(0)
    check_rule(nn.Conv1d(4, 6, 4, **kwargs), torch.randn(3, 4, 17))


def test_many_positions_take_the_explicit_form():
    torch.manual_seed(0)
    ps, _ = check_rule(nn.Conv2d(2, 3, 2), torch.randn(2, 2, 12, 12))
    assert ps.per_w is not None
