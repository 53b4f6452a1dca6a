"""Every combiner through the engine, with SGD and AdamW: training makes progress."""

from __future__ import annotations

import copy

import pytest
import torch

from gradaccum.engine import Accumulator
from gradaccum.multitask import make_combiner
from tests.test_task_window import TwoHeads, TwoTaskLoss, data

SETTINGS = [
    ("linear", {}),
    ("pcgrad", {}),
    ("cagrad", {}),
    ("gradnorm", {}),
    ("gcond", {"stochastic": False}),
    ("gcond", {"stochastic": True}),
]


def task_losses(model, batch):
    loss_fn = TwoTaskLoss()
    with torch.no_grad():
        losses = loss_fn(model, batch, loss_fn.tasks)
    counts = loss_fn.count(batch)
    return {k: float(v) / counts[k] for k, v in losses.items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize(("name", "kw"), SETTINGS)
def test_combiner_trains_end_to_end(name, kw, optimizer):
    torch.manual_seed(0)
    model = TwoHeads()
    batch = data(n=32, seed=1)
    start = task_losses(model, batch)
    gcond = name == "gcond"  # GCond carries its own momentum: the optimizer's is turned off
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0 if gcond else 0.9)
    else:
        betas = (0.0, 0.999) if gcond else (0.9, 0.999)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=betas)
    shared = [model.trunk.weight, model.trunk.bias]
    engine = Accumulator(
        model, opt, micro_batch_size=8, combiner=make_combiner(name, **kw), shared_params=shared
    )
    results = [engine.step(batch, TwoTaskLoss()) for _ in range(15)]
    end = task_losses(model, batch)
    assert not any(r.skipped for r in results)
    assert all(end[k] < start[k] for k in start), (start, end)
    assert engine.steps == 15


def test_stochastic_gcond_needs_micro_batches_divisible_by_tasks():
    model = TwoHeads()
    engine = Accumulator(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        micro_batch_size=4,
        combiner=make_combiner("gcond", stochastic=True),
    )
    with pytest.raises(ValueError, match="split evenly|divisible|multiple"):
        engine.step(data(n=12), TwoTaskLoss())  # 3 micro-batches for 2 tasks


def test_combiner_state_resumes_exactly():
    torch.manual_seed(0)
    model = TwoHeads()
    batch = data(n=16)

    def build(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        return Accumulator(m, opt, micro_batch_size=4, combiner=make_combiner("gcond")), opt

    whole = copy.deepcopy(model)
    e1, _ = build(whole)
    for _ in range(4):
        e1.step(batch, TwoTaskLoss())
    part = copy.deepcopy(model)
    e2, o2 = build(part)
    for _ in range(2):
        e2.step(batch, TwoTaskLoss())
    state, opt_state = copy.deepcopy(e2.state_dict()), copy.deepcopy(o2.state_dict())
    resumed = copy.deepcopy(part)
    e3, o3 = build(resumed)
    e3.load_state_dict(state)
    o3.load_state_dict(opt_state)
    for _ in range(2):
        e3.step(batch, TwoTaskLoss())
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
