"""Multi-task windows: per-task buffers, exact per-task normalization, combiner hand-off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradaccum.engine import Accumulator
from gradaccum.multitask.base import Combiner, TaskGrads
from gradaccum.plan import slice_batch
from gradaccum.task_window import TaskWindow, shared_slice
from tests.helpers import Capture, max_rel_err


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(6, 16)
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 2)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return self.cls(h), self.reg(h)


class TwoTaskLoss:
    """cls: cross-entropy on samples with label >= 0 (others carry no loss); reg: MSE."""

    tasks = ("cls", "reg")

    def count(self, batch):
        x, y, z = batch
        return {"cls": int((y >= 0).sum()), "reg": x.shape[0]}

    def __call__(self, model, batch, tasks):
        x, y, z = batch
        logits, pred = model(x)
        out = {}
        if "cls" in tasks:
            out["cls"] = F.cross_entropy(logits, y, ignore_index=-1, reduction="sum")
        if "reg" in tasks:
            out["reg"] = ((pred - z) ** 2).sum()
        return out


class Recorder(Combiner):
    """Weighted sum that keeps what it was given."""

    def __init__(self, schedule=None) -> None:
        self.seen: list[TaskGrads] = []
        self._schedule = schedule

    def schedule(self, k, names):
        return None if self._schedule is None else self._schedule(k, names)

    def combine(self, tg):
        self.seen.append(tg)
        return tg.grads.sum(0), {}


def data(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    y[::3] = -1  # some samples carry no classification label
    return x, y, torch.randn(n, 2, generator=g)


def task_grads(model, batch, task):
    model.zero_grad(set_to_none=True)
    loss_fn = TwoTaskLoss()
    (loss_fn(model, batch, [task])[task] / loss_fn.count(batch)[task]).backward()
    grads = torch.cat(
        [
            p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
            for p in model.parameters()
        ]
    )
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("micro", [1, 3, 4, 10])
def test_classical_task_gradients_are_exact(micro):
    torch.manual_seed(0)
    model = TwoHeads()
    batch = data()
    want = {t: task_grads(model, batch, t) for t in TwoTaskLoss.tasks}
    combiner = Recorder()
    opt = Capture(model.parameters())
    result = Accumulator(model, opt, micro_batch_size=micro, combiner=combiner).step(
        batch, TwoTaskLoss()
    )
    tg = combiner.seen[-1]
    assert tg.names == ["cls", "reg"]
    for i, t in enumerate(tg.names):
        assert max_rel_err([tg.grads[i]], [want[t]]) <= 1e-5
    applied = torch.cat([g.flatten() for g in opt.seen[-1]])
    assert max_rel_err([applied], [want["cls"] + want["reg"]]) <= 1e-5
    assert set(result.info) >= {"loss/cls", "loss/reg"}


def test_stochastic_schedule_gives_each_micro_batch_one_task():
    torch.manual_seed(0)
    model = TwoHeads()
    batch = data(n=8)
    order = ["reg", "cls", "cls", "reg"]
    combiner = Recorder(schedule=lambda k, names: order)
    calls = []
    loss_fn = TwoTaskLoss()

    def counting(model, mb, tasks):
        calls.append(list(tasks))
        return loss_fn(model, mb, tasks)

    counting.tasks, counting.count = loss_fn.tasks, loss_fn.count
    cls_part = tuple(torch.cat([v[2:4], v[4:6]]) for v in batch)
    reg_part = tuple(torch.cat([v[0:2], v[6:8]]) for v in batch)
    want_cls, want_reg = task_grads(model, cls_part, "cls"), task_grads(model, reg_part, "reg")
    Accumulator(model, Capture(model.parameters()), micro_batch_size=2, combiner=combiner).step(
        batch, counting
    )
    assert calls == [[t] for t in order]
    tg = combiner.seen[-1]
    assert max_rel_err([tg.grads[0]], [want_cls]) <= 1e-5
    assert max_rel_err([tg.grads[1]], [want_reg]) <= 1e-5


def test_shared_slice_must_be_consecutive():
    model = TwoHeads()
    params = list(model.parameters())
    assert shared_slice(params, [model.trunk.weight, model.trunk.bias]) == slice(0, 6 * 16 + 16)
    with pytest.raises(ValueError, match="consecutive"):
        shared_slice(params, [model.trunk.weight, model.cls.bias])


def test_a_task_with_no_items_in_the_window_does_not_divide_by_zero():
    torch.manual_seed(0)
    model = TwoHeads()
    x, y, z = data(n=4)
    y[:] = -1
    combiner = Recorder()
    Accumulator(model, Capture(model.parameters()), micro_batch_size=2, combiner=combiner).step(
        (x, y, z), TwoTaskLoss()
    )
    assert torch.isfinite(combiner.seen[-1].grads).all()
    assert slice_batch((x, y, z), 0, 1)[0].shape[0] == 1


@pytest.mark.parametrize(
    ("dtype", "nonfinite", "in_place", "tol"),
    [
        (torch.float32, "skip_step", True, 1e-5),
        (torch.float32, "drop_micro_batch", False, 1e-5),  # each micro-batch is checked alone
        (torch.bfloat16, "skip_step", False, 2e-2),
    ],
)
def test_task_gradients_are_exact_with_and_without_in_place_buffers(
    dtype, nonfinite, in_place, tol
):
    torch.manual_seed(0)
    model = TwoHeads()
    batch = data(n=10)
    want = {t: task_grads(model, batch, t) for t in TwoTaskLoss.tasks}
    combiner = Recorder()
    engine = Accumulator(
        model,
        Capture(model.parameters()),
        micro_batch_size=5,
        combiner=combiner,
        nonfinite=nonfinite,
        task_buffer_dtype=dtype,
    )
    loss_fn = TwoTaskLoss()
    counts = loss_fn.count(batch)
    window = TaskWindow(engine, counts, 10)
    assert window.in_place is in_place
    for start in (0, 5):
        mb = slice_batch(batch, start, start + 5)
        losses = loss_fn(model, mb, loss_fn.tasks)
        window.retain_graph = True
        window.backward(losses["cls"], loss_fn.count(mb)["cls"], 5, "cls")
        window.retain_graph = False
        window.backward(losses["reg"], loss_fn.count(mb)["reg"], 0, "reg")
        assert all(p.grad is None for p in model.parameters())
    window.finish()
    tg = combiner.seen[-1]
    for i, t in enumerate(tg.names):
        assert max_rel_err([tg.grads[i]], [want[t]]) <= tol
