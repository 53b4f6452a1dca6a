"""The linear rule (nn.Linear and GPT-2's Conv1D), both forms, against torch.func."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tests.persample.oracle import check_rule, rel


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("shape", "explicit"),
    [((5, 12), False), ((4, 3, 12), False), ((3, 2, 4, 12), True), ((4, 20, 12), True)],
)
def test_linear(shape, explicit, bias):
    torch.manual_seed(0)
    layer = nn.Linear(12, 7, bias=bias)
    ps, _ = check_rule(layer, torch.randn(shape))
    assert (ps.per_w is not None) == explicit


def test_frozen_bias_is_left_out():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    layer.bias.requires_grad_(False)
    ps, want = check_rule(layer, torch.randn(3, 5, 6))
    assert set(want) == {"weight"}


@pytest.mark.parametrize("t", [2, 30])
def test_gpt2_conv1d_weight_is_in_by_out(t):
    torch.manual_seed(0)
    layer = Conv1D(9, 6)  # nf=9 outputs, nx=6 inputs: weight (6, 9)
    nn.init.normal_(layer.bias)
    check_rule(layer, torch.randn(4, t, 6))


@pytest.mark.parametrize("t", [3, 40])
def test_rows_are_the_per_sample_weight_rows(t):
    torch.manual_seed(0)
    layer = nn.Linear(8, 11, bias=False)
    ps, want = check_rule(layer, torch.randn(4, t, 8))
    index = torch.randint(0, 11, (4, 5))
    rows = torch.stack([want["weight"][b, index[b]] for b in range(4)])
    assert rel(ps.rows("weight", index), rows) <= 1e-5
