"""The multitask bench, quick: every variant is timed, and linear equals plain exactly."""

from __future__ import annotations

import json
import math

from gradaccum.bench.multitask import HEADLINE, VARIANTS, format_table, run


def test_quick_bench_structure_and_sanity():
    result = run(quick=True)
    assert [(c["model"], c["tasks"]) for c in result["configs"]] == [
        ("cnn", 2),
        ("lm", 2),
        ("cnn", 4),
        ("lm", 4),
    ]
    for c in result["configs"]:
        assert set(c["seconds"]) == set(VARIANTS) == set(c["vs_plain"])
        assert c["vs_plain"]["plain"] == 1.0
        assert all(t > 0 and math.isfinite(t) for t in c["seconds"].values())
        # the weighted sum of the task gradients is exactly plain accumulation's gradient
        assert c["linear_grad_rel_err"] <= 1e-5
    for name in HEADLINE:
        assert result[f"{name}_vs_plain"] > 0
    assert result["pcgrad_vs_torchjd"] > 0
    assert json.loads(json.dumps(result)) == result
    table = format_table(result)
    assert all(name in table for name in VARIANTS)
