"""GradNorm: the weight update by hand (Adam's first step is lr * sign of the gradient)."""

from __future__ import annotations

import pytest
import torch

from gradaccum.multitask import GradNorm
from tests.multitask import task_grads


def test_first_update_by_hand_and_weights_applied_next_window():
    rows = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # shared norms 1 and 3, mean 2
    combiner = GradNorm(alpha=1.5, lr=0.025)
    out, info = combiner.combine(task_grads(rows, {"t0": 2.0, "t1": 4.0}))
    torch.testing.assert_close(out, rows.sum(0))  # weights before the update: all 1
    assert info["gradnorm/loss"] == pytest.approx(2.0)  # |1 - 2| + |3 - 2|
    # d/dw_k |w_k n_k - 2| = sign(n_k - 2) n_k: t0 below the target rises, t1 falls
    assert combiner.weights.tolist() == pytest.approx([1.025, 0.975])
    out, _ = combiner.combine(task_grads(rows, {"t0": 2.0, "t1": 4.0}))
    torch.testing.assert_close(out, 1.025 * rows[0] + 0.975 * rows[1])


def test_only_the_shared_columns_are_balanced():
    rows = torch.tensor([[1.0, 100.0, 0.0], [3.0, 0.0, 0.0]])  # column 0 is shared
    combiner = GradNorm()
    combiner.combine(task_grads(rows, shared=slice(0, 1)))
    assert combiner.weights.tolist() == pytest.approx([1.025, 0.975])
    combiner = GradNorm()
    combiner.combine(task_grads(rows))  # shared unknown: all columns, t0 is now the larger
    assert combiner.weights.tolist() == pytest.approx([0.975, 1.025])


def test_lagging_task_gains_weight_and_weights_sum_to_n():
    rows = torch.eye(3)  # equal gradient norms
    combiner = GradNorm()
    combiner.combine(task_grads(rows, {"t0": 1.0, "t1": 1.0, "t2": 1.0}))
    for _ in range(5):  # t0's loss stays put while the others halve
        combiner.combine(task_grads(rows, {"t0": 1.0, "t1": 0.5, "t2": 0.5}))
    w = combiner.weights
    assert float(w.sum()) == pytest.approx(3.0)
    assert w[0] > 1.0 > w[1] and float(w[1]) == pytest.approx(float(w[2]))


def test_needs_every_loss():
    with pytest.raises(ValueError, match="missing \\['t1'\\]"):
        GradNorm().combine(task_grads([[1.0], [2.0]], {"t0": 1.0}))
