"""Automatic micro-batch size: the largest that fits, measured; the global batch unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from gradaccum.engine import Accumulator
from gradaccum.losses import SampleLoss
from gradaccum.memory.auto_batch import BudgetTooSmall, find_micro_batch_size, optimizer_state_bytes
from gradaccum.memory.peak import PeakMeter

MiB = 2**20


@pytest.mark.parametrize("fits_up_to", [1, 5, 13, 64, 100])
def test_search_finds_the_largest_size_that_fits(fits_up_to):
    calls = []

    def probe(b):
        calls.append(b)
        return 100 + 10 * b

    budget = 100 + 10 * fits_up_to
    assert find_micro_batch_size(probe, max_size=64, budget=budget) == min(fits_up_to, 64)
    assert len(calls) <= 2 * 7 + 1  # doubling then bisection: logarithmic


def test_budget_below_one_sample_names_the_need():
    with pytest.raises(BudgetTooSmall, match="needs 3 MiB"):
        find_micro_batch_size(lambda b: 3 * MiB * b, max_size=8, budget=2 * MiB)


def test_optimizer_state_is_reserved_until_it_exists():
    model = nn.Linear(100, 10)
    opt = torch.optim.AdamW(model.parameters())
    assert optimizer_state_bytes(opt) == 2 * 4 * (1000 + 10)
    model(torch.randn(2, 100)).sum().backward()
    opt.step()
    assert optimizer_state_bytes(opt) == 0
    assert optimizer_state_bytes(torch.optim.SGD(model.parameters(), lr=0.1)) == 0


def test_peak_meter_sees_a_large_allocation():
    with PeakMeter() as idle:
        pass
    with PeakMeter() as busy:
        x = torch.ones(64 * MiB // 4)
        x.add_(1)
        del x
    assert busy.peak - idle.peak > 48 * MiB


AUTO_SCRIPT = """
import copy, json, sys
import torch
from torch import nn
from gradaccum.engine import Accumulator
from gradaccum.losses import SampleLoss
from gradaccum.memory.peak import PeakMeter

torch.manual_seed(0)
# About 256 KiB of activations per sample, so a batch of 256 needs ~64 MiB.
model = nn.Sequential(nn.Linear(64, 16384), nn.ReLU(), nn.Linear(16384, 10))
x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
out = {}
for extra in map(int, sys.argv[1:]):
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    SampleLoss()(m, (x[:1], y[:1])).backward()  # one-time allocations of a first pass
    opt.zero_grad(set_to_none=True)
    with PeakMeter() as base:
        pass
    engine = Accumulator(m, opt, micro_batch_size="auto", memory_budget=base.peak + extra * 2**20)
    reference = copy.deepcopy(m)
    engine.step((x, y), SampleLoss())
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    Accumulator(reference, ref_opt, micro_batch_size=256).step((x, y), SampleLoss())
    diff = max(float((a - b).abs().max()) for a, b in zip(m.parameters(), reference.parameters()))
    out[extra] = {"size": engine.micro_batch_size, "max_weight_diff": diff}
print(json.dumps(out))
"""


def run_auto(*extras_mib: int) -> dict:
    """Run the auto-size search in a fresh process: resident-set peaks are process-wide."""
    proc = subprocess.run(
        [sys.executable, "-c", AUTO_SCRIPT, *map(str, extras_mib)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return {int(k): v for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


def test_auto_size_is_measured_grows_with_budget_and_never_changes_the_result():
    runs = run_auto(24, 96)
    assert 1 < runs[24]["size"] < runs[96]["size"] <= 256
    for run in runs.values():
        assert run["max_weight_diff"] <= 1e-6


def test_budget_too_small_for_one_sample():
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    engine = Accumulator(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        micro_batch_size="auto",
        memory_budget=1 * MiB,
    )
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(BudgetTooSmall, match="raise the budget to at least"):
        engine.step((torch.randn(8, 64), torch.randint(0, 10, (8,))), SampleLoss())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_a_floor_keeps_the_search_from_probing_sizes_predicted_to_break_the_budget():
    calls = []

    def probe(b):
        calls.append(b)
        return 100 * MiB + 10 * MiB * b  # 100 MiB in use before probing, 10 MiB per sample

    budget = 100 * MiB + 10 * MiB * 5
    assert find_micro_batch_size(probe, 64, budget, floor=100 * MiB) == 5
    assert max(calls) == 5  # 8 (and anything above 5) was predicted, not run
