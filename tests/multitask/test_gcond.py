"""GCond on crafted vectors, against results computed by hand from the spec."""

from __future__ import annotations

import math
from collections import Counter, deque

import pytest
import torch

from gradaccum.multitask import GCond, stochastic_schedule
from gradaccum.multitask.gcond import resolution
from tests.multitask import task_grads


def run(rows, **kw) -> tuple[GCond, torch.Tensor, dict[str, float]]:
    """One window through a GCond without momentum."""
    gc = GCond(beta=0.0, **kw)
    out, info = gc.combine(task_grads(rows))
    return gc, out.double(), info


class Reference:
    """The spec applied literally to the vectors (fp64), without momentum."""

    def __init__(self, n: int, cap: float | None) -> None:
        self.ema, self.history, self.prev, self.cap = [1.0] * n, deque(maxlen=3), None, cap

    def score(self, g: list[torch.Tensor], x: int, share: float) -> float:
        stab, prev = 0.0, self.prev[x] if self.prev is not None else None
        if prev is not None and prev.norm() * g[x].norm() > 0:
            stab = max(0.0, float(g[x] @ prev / (prev.norm() * g[x].norm())))
        return 0.8 * stab + 0.2 * share

    def step(self, rows: torch.Tensor) -> torch.Tensor:
        g, n = list(rows.double()), len(rows)
        raw = [float(v.norm()) for v in g]
        self.ema = [0.95 * e + 0.05 * r for e, r in zip(self.ema, raw)]
        if self.cap:
            g = [v * min(1.0, self.cap / r) if r > 0 else v for v, r in zip(g, raw)]
        for _ in range(2 * n):
            pairs = [
                (float(g[i] @ g[j] / (g[i].norm() * g[j].norm())), i, j)
                for i in range(n)
                for j in range(i + 1, n)
                if g[i].norm() * g[j].norm() > 0
            ]
            if not pairs or min(pairs)[0] >= -1e-9:
                break
            c, i, j = min(pairs)
            if len(self.history) == 3 and len(set(self.history)) == 1 and self.history[0] in (i, j):
                w, lo = (j, i) if self.history[0] == i else (i, j)
            else:
                r = [float(g[x].norm()) / self.ema[x] for x in (i, j)]
                si, sj = self.score(g, i, r[0] / sum(r)), self.score(g, j, r[1] / sum(r))
                w, lo = (i, j) if si >= sj else (j, i)
            self.history.append(w)
            s_w, s_l = resolution(c)
            d, gw, gl = g[w] @ g[lo], g[w], g[lo]
            g[w], g[lo] = gw - s_w * d / (gl @ gl) * gl, gl - s_l * d / (gw @ gw) * gw
        self.prev = g
        return sum(g)


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_spec_applied_to_the_vectors(seed):
    gen = torch.Generator().manual_seed(seed)
    n, cap = 2 + seed % 3, 1.5 if seed % 2 else None
    gc, ref, base = (
        GCond(beta=0.0, norm_cap=cap),
        Reference(n, cap),
        torch.randn(n, 5, generator=gen),
    )
    for _ in range(4):  # windows share a direction, so the stability score matters
        rows = base + 0.5 * torch.randn(n, 5, generator=gen)
        out = gc.combine(task_grads(rows))[0]
        torch.testing.assert_close(out.double(), ref.step(rows), rtol=1e-5, atol=1e-5)
        assert list(gc.history) == [f"t{k}" for k in ref.history]


def test_resolution_strengths_per_regime():
    assert resolution(-1.0) == resolution(-0.8) == (0.0, 1.0)  # critical: alpha = pi
    s_w, s_l = resolution(-0.65)  # main, halfway: alpha = pi/2 + pi/2 * 0.5^2
    assert (s_w, s_l) == (pytest.approx(math.sin(5 * math.pi / 8)), 1.0)
    assert resolution(-0.5) == (1.0, 1.0)  # alpha = pi/2: both projected fully
    assert resolution(-0.25) == (pytest.approx(math.sin(math.pi / 4)),) * 2  # weak, halfway
    assert resolution(0.0) == (0.0, 0.0)


def test_weak_conflict_moves_both_symmetrically():
    g0, g1 = torch.tensor([25.0, 0.0]), torch.tensor([-7.0, 24.0])  # norms 25, cos -0.28
    gc, out, info = run(torch.stack([g0, g1]))
    # equal norms and no history: a tie, t0 wins; alpha = pi/2 (1 - 0.22 / 0.5) = 0.28 pi
    s = math.sin(0.28 * math.pi)
    want = (g0 + 0.28 * s * g1) + (g1 + 0.28 * s * g0)  # d / ||g||^2 = -175 / 625
    torch.testing.assert_close(out, want.double())
    assert (info["gcond/iters"], info["gcond/weak"], info["gcond/min_cos"]) == (1, 1, -0.28)
    assert list(gc.history) == ["t0"]


def test_main_conflict_stronger_task_wins():
    c = -0.65
    g0, g1 = torch.tensor([2.0, 0.0]), torch.tensor([c, math.sqrt(1 - c * c)])
    gc, out, info = run(torch.stack([g0, g1]))
    # norm/EMA: t0 2 / 1.05 beats t1 1 / 1; d = -1.3, alpha = 5 pi / 8
    s_w = math.sin(5 * math.pi / 8)
    want = (g0 + 1.3 * s_w * g1) + (g1 + 1.3 / 4 * g0)
    torch.testing.assert_close(out, want.double())
    assert info["gcond/main"] == 1 and list(gc.history) == ["t0"]


def test_critical_then_main_in_3d():
    g0 = torch.tensor([2.0, 0.0, 0.0])
    g1 = torch.tensor([-0.9, math.sqrt(0.19), 0.0])  # cos(g0, g1) = -0.9: critical
    g2 = torch.tensor([-0.6, 0.0, 0.8])  # cos(g0, g2) = -0.6: main; cos(g1, g2) > 0
    gc, out, info = run(torch.stack([g0, g1, g2]))
    # t0 is the strongest (norm/EMA 2 / 1.05 against 1 / 1) and wins both conflicts:
    # 1) critical: t0 is kept; g1 loses its g0 part: g1 + 1.8 / 4 g0 = (0, sqrt .19, 0)
    # 2) (g0, g2) at -0.6, d = -1.2: alpha = pi/2 + pi/2 (1/3)^2 = 5 pi / 9
    s_w = math.sin(5 * math.pi / 9)
    want = (g0 + 1.2 * s_w * g2) + torch.tensor([0.0, math.sqrt(0.19), 0.0]) + (g2 + 0.3 * g0)
    torch.testing.assert_close(out, want.double())
    assert (info["gcond/iters"], info["gcond/critical"], info["gcond/main"]) == (2, 1, 1)
    assert list(gc.history) == ["t0", "t0"]


def test_a_task_that_won_three_in_a_row_loses_the_next():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([-1.0, 0.1])  # critical conflict
    gc = GCond(beta=0.0)
    for _ in range(3):  # a is stronger and (from window 2) more stable: a wins
        out, _ = gc.combine(task_grads(torch.stack([a, b])))
        torch.testing.assert_close(out, torch.tensor([3.0, 0.1]))  # a + (b minus its a part)
    assert list(gc.history) == ["t0"] * 3
    out, _ = gc.combine(task_grads(torch.stack([a, b])))
    torch.testing.assert_close(out, a - (a @ b) / (b @ b) * b + b)  # now b is kept
    assert list(gc.history) == ["t0", "t0", "t1"]


def test_momentum_bias_correction_and_sign():
    gen = torch.Generator().manual_seed(0)
    windows = [torch.rand(2, 4, generator=gen) + 0.1 for _ in range(3)]  # no conflicts
    gc, lion = GCond(beta=0.85), GCond(beta=0.85, update="sign")
    m = torch.zeros(4, dtype=torch.float64)
    for t, rows in enumerate(windows, start=1):
        m = 0.85 * m + 0.15 * rows.sum(0).double()
        out, _ = gc.combine(task_grads(rows))
        torch.testing.assert_close(out.double(), m / (1 - 0.85**t))
        assert torch.equal(lion.combine(task_grads(rows))[0], torch.sign(m).float())
    first = GCond().combine(task_grads(windows[0]))[0]
    torch.testing.assert_close(first, windows[0].sum(0))  # step 1: m_hat = g


def test_without_momentum_no_conflict_is_the_sum_every_window():
    gc = GCond(beta=0.0)
    for seed in range(3):
        rows = torch.rand(3, 5, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(gc.combine(task_grads(rows))[0], rows.sum(0))


def test_norm_cap_clips_after_the_ema_sees_the_raw_norm():
    out, info = GCond(norm_cap=1.0).combine(task_grads([[10.0, 0.0], [0.0, 0.5]]))
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5]))
    assert info["gcond/norm_ema/t0"] == pytest.approx(0.95 + 0.05 * 10)


def test_stochastic_schedule():
    names = ["a", "b", "c"]
    plan = stochastic_schedule(12, names, torch.Generator().manual_seed(0))
    assert len(plan) == 12 and Counter(plan) == {"a": 4, "b": 4, "c": 4}
    assert plan == stochastic_schedule(12, names, torch.Generator().manual_seed(0))
    assert plan != stochastic_schedule(12, names, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="multiple of 3"):
        stochastic_schedule(10, names, torch.Generator())
    assert GCond(stochastic=False).schedule(12, names) is None
    gc = GCond(seed=4)
    assert gc.stochastic and gc.schedule(6, names) != gc.schedule(6, names)  # the state moves


def test_options_are_checked_and_exposed():
    assert GCond(bn_eval=True).bn_eval and not GCond().bn_eval
    for bad in ({"update": "trust_ratio"}, {"beta": 1.0}, {"thresholds": (-0.5, -0.8, 0.0)}):
        with pytest.raises(ValueError):
            GCond(**bad)
    gc = GCond()
    gc.combine(task_grads([[1.0], [2.0]]))
    with pytest.raises(ValueError, match="set up for tasks"):
        gc.combine(task_grads([[1.0], [2.0], [3.0]]))
