"""The hooks: one clear error for missing rules, setup undone, misuse caught."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradaccum.errors import UserError
from gradaccum.persample import Collector


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.PReLU(), nn.LayerNorm(8), nn.BatchNorm1d(8))


def test_missing_rules_fail_in_one_line_naming_the_types():
    with pytest.raises(UserError) as err:
        Collector(mlp())
    message = str(err.value)
    assert "\n" not in message
    assert "BatchNorm1d, PReLU" in message and "allow_fallback=True" in message


def test_frozen_layers_need_no_rule_and_setup_is_undone():
    model = mlp()
    for p in [*model[1].parameters(), *model[3].parameters()]:
        p.requires_grad_(False)
    collector = Collector(model)
    collector.attach()
    assert not any(p.requires_grad for p in model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    results = collector.take().results
    assert [type(layer.module) for layer, _ in results] == [nn.LayerNorm, nn.Linear]
    assert all(p.grad is None for p in model.parameters())
    collector.detach()
    assert [p.requires_grad for p in model.parameters()] == [
        True,
        True,
        False,
        True,
        True,
        False,
        False,
    ]


def test_a_module_run_twice_is_refused():
    layer = nn.Linear(3, 3)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    collector = Collector(model)
    collector.attach()
    try:
        with pytest.raises(UserError, match="ran twice"):
            model(torch.randn(2, 3))
    finally:
        collector.detach()


def test_an_input_changed_in_place_is_refused():
    class Clobber(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            x = x * 1.0
            y = self.lin(x)
            x.mul_(2)
            return y

    model = Clobber()
    collector = Collector(model)
    collector.attach()
    try:
        with pytest.raises(UserError, match="changed in place"):
            model(torch.randn(2, 3)).sum().backward()
    finally:
        collector.detach()


def test_two_forwards_into_one_backward_are_refused():
    model = nn.Sequential(nn.Linear(3, 3))
    collector = Collector(model)
    collector.attach()
    try:
        (model(torch.randn(2, 3)) + model(torch.randn(2, 3))).sum().backward()
        with pytest.raises(UserError, match="2 forward passes"):
            collector.take()
    finally:
        collector.detach()
