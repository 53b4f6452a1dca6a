"""The combiner interface: input checks, the factory, and properties every combiner shares."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradaccum.errors import UserError
from gradaccum.multitask import COMBINERS, TaskGrads, make_combiner
from gradaccum.multitask.base import cross, gram
from tests.multitask import task_grads

# with no conflict each combiner is a plain weighted sum (CAGrad with c = 0: the mean)
NO_CONFLICT = {
    "linear": ({}, 1.0),
    "pcgrad": ({"seed": 3}, 1.0),
    "cagrad": ({"c": 0.0}, None),
    "gradnorm": ({}, 1.0),
    "gcond": ({}, 1.0),
}


def test_task_grads_checks_its_shape():
    with pytest.raises(ValueError, match="N_tasks, P"):
        TaskGrads(["a"], torch.zeros(3), {}, None, 0)
    with pytest.raises(ValueError, match="2 task names but 3"):
        TaskGrads(["a", "b"], torch.zeros(3, 4), {}, None, 0)
    with pytest.raises(ValueError, match="unique"):
        TaskGrads(["a", "a"], torch.zeros(2, 4), {}, None, 0)


def test_make_combiner_names_and_errors():
    assert list(COMBINERS) == ["linear", "pcgrad", "cagrad", "gradnorm", "gcond"]
    assert type(make_combiner("cagrad", c=0.2)).__name__ == "CAGrad"
    with pytest.raises(UserError, match="use one of linear, pcgrad"):
        make_combiner("mgda")
    with pytest.raises(UserError, match="combiner gcond"):
        make_combiner("gcond", update="bogus")
    with pytest.raises(UserError, match="combiner pcgrad"):
        make_combiner("pcgrad", nope=1)


def test_gram_and_cross_match_matmul_across_chunks(monkeypatch):
    monkeypatch.setattr("gradaccum.multitask.base.GRAM_CHUNK", 3)
    a, b = torch.randn(3, 10), torch.randn(2, 10)
    torch.testing.assert_close(gram(a), (a.double() @ a.double().T))
    torch.testing.assert_close(cross(a, b), (a.double() @ b.double().T))


@pytest.mark.parametrize("name", list(COMBINERS))
def test_no_conflict_is_the_weighted_sum(name):
    kw, weight = NO_CONFLICT[name]
    rows = torch.rand(3, 7, generator=torch.Generator().manual_seed(0)) + 0.1  # all dots > 0
    out, _ = make_combiner(name, **kw).combine(task_grads(rows))
    want = rows.sum(0) * weight if weight is not None else rows.mean(0)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def _windows(seed: int, count: int, n: int = 3, p: int = 6):
    """``count`` windows of random (conflicting) gradients and losses."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        losses = {f"t{i}": 1.0 + float(torch.rand(1, generator=g)) for i in range(n)}
        out.append(task_grads(torch.randn(n, p, generator=g), losses))
    return out


@pytest.mark.parametrize("name", list(COMBINERS))
def test_state_dict_round_trip_resumes_exactly(name):
    first, second = make_combiner(name), make_combiner(name)
    windows = _windows(1, 5)
    for tg in windows[:2]:
        first.combine(tg)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert first.schedule(6, windows[0].names) == second.schedule(6, windows[0].names)
    for tg in windows[2:]:
        (a, info_a), (b, info_b) = first.combine(tg), second.combine(tg)
        assert torch.equal(a, b) and info_a == info_b


@st.composite
def two_windows(draw):
    """Two windows of gradients with the same (random) N and P, plus one loss value."""
    n, p = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    row = st.lists(st.floats(-1e3, 1e3, width=32), min_size=p, max_size=p)
    window = st.lists(row, min_size=n, max_size=n)
    return draw(window), draw(window), draw(st.floats(0.0, 10.0))


@pytest.mark.parametrize("name", list(COMBINERS))
@settings(max_examples=25, deadline=None)
@given(case=two_windows())
def test_output_is_finite_with_the_right_shape(name, case):
    *windows, loss = case
    combiner = make_combiner(name)
    for w in windows:
        n, p = len(w), len(w[0])
        out, info = combiner.combine(task_grads(w, {f"t{i}": loss for i in range(n)}))
        assert out.shape == (p,) and out.dtype == torch.float32
        assert torch.isfinite(out).all(), (w, out)
        assert all(isinstance(v, float) for v in info.values())
