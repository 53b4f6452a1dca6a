"""WeightedSum: the fixed-weight baseline."""

from __future__ import annotations

import pytest
import torch

from gradaccum.multitask import WeightedSum
from tests.multitask import task_grads


def test_weighted_sum_defaults_missing_tasks_to_one():
    rows = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])
    out, _ = WeightedSum({"t0": 2.0, "t2": 0.0}).combine(task_grads(rows))
    torch.testing.assert_close(out, 2.0 * rows[0] + rows[1])


def test_weighted_sum_rejects_unknown_task_names():
    with pytest.raises(ValueError, match="unknown tasks \\['typo'\\]"):
        WeightedSum({"typo": 1.0}).combine(task_grads([[1.0]]))
