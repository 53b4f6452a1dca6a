"""CAGrad: the simplex solution against a brute-force grid, and the returned direction."""

from __future__ import annotations

import math

import pytest
import torch

from gradaccum.multitask import CAGrad
from gradaccum.multitask.cagrad import (
    _projected_gradient,
    cagrad_objective,
    cagrad_weights,
    project_simplex,
)
from tests.multitask import task_grads


def simplex_grid(n: int, steps: int) -> torch.Tensor:
    """Every point of the simplex in R^n (n = 2 or 3) with coordinates in multiples of 1/steps."""
    a = torch.arange(steps + 1, dtype=torch.float64)
    if n == 2:
        return torch.stack([steps - a, a], 1) / steps
    i, j = torch.meshgrid(a, a, indexing="ij")
    keep = i + j <= steps
    return torch.stack([i[keep], j[keep], steps - i[keep] - j[keep]], 1) / steps


def cases(n: int):
    gen = torch.Generator().manual_seed(n)
    for case in range(8):
        x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
        if case % 2:  # nearly opposed tasks, the regime CAGrad is for
            x[1] = -0.6 * x[0] + 0.05 * x[1]
        yield x @ x.T, [0.1, 0.5, 1.0, 2.0][case % 4]


@pytest.mark.parametrize("n, steps, tol", [(2, 20000, 1e-12), (3, 200, 1e-9)])
def test_solution_beats_a_grid_search_on_the_simplex(n, steps, tol):
    grid = simplex_grid(n, steps)
    for k, c in cases(n):
        w = cagrad_weights(k, c)
        assert w.min() >= 0 and float(w.sum()) == pytest.approx(1.0)
        best = float(cagrad_objective(grid, k, c).min())
        assert float(cagrad_objective(w, k, c)) <= best + tol * float(k.diagonal().max())


def test_closed_form_for_two_tasks_agrees_with_projected_gradient():
    for k, c in cases(2):
        exact = float(cagrad_objective(cagrad_weights(k, c), k, c))
        iterative = float(cagrad_objective(_projected_gradient(k, c, 50), k, c))
        assert exact <= iterative + 1e-12 * float(k.diagonal().max())
        assert iterative == pytest.approx(exact, rel=1e-6, abs=1e-9)


def test_combined_direction_is_g0_plus_scaled_gw():
    rows = torch.tensor([[1.0, 0.3, 0.0], [-0.7, 0.9, 0.2], [0.1, -0.4, 1.0]])
    out, info = CAGrad(c=0.5).combine(task_grads(rows))
    g = rows.double()
    w = torch.tensor([info[f"cagrad/w/t{i}"] for i in range(3)], dtype=torch.float64)
    g0, gw = g.mean(0), w @ g
    want = g0 + 0.5 * g0.norm() / gw.norm() * gw
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    assert info["cagrad/lambda"] == pytest.approx(float(0.5 * g0.norm() / gw.norm()), rel=1e-6)


def test_project_simplex():
    torch.testing.assert_close(
        project_simplex(torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)),
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
    )
    p = project_simplex(torch.tensor([0.4, 0.3, 0.1], dtype=torch.float64))
    torch.testing.assert_close(p, torch.tensor([0.4, 0.3, 0.1], dtype=torch.float64) + 0.2 / 3)
    assert math.isclose(float(p.sum()), 1.0)
