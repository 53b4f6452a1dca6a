"""The per-sample clipping bench, quick: structure, and gradaccum exact against the loop."""

from __future__ import annotations

import json

from gradaccum.bench.persample import VARIANTS, format_table, run


def test_quick_bench_reports_every_variant_and_is_exact():
    result = run(quick=True)
    assert json.loads(json.dumps(result)) == result
    assert [c["name"] for c in result["cases"]] == ["gpt2 T=16", "alexnet"]
    for case in result["cases"]:
        assert list(case["variants"]) == list(VARIANTS)
        plain = case["variants"]["plain"]
        assert plain["time_ratio"] == 1.0 and plain["mem_ratio"] == 1.0
        for v in case["variants"].values():
            if not v["supported"]:
                assert v["reason"]
                continue
            assert v["seconds"] > 0 and v["time_ratio"] > 0 and v["step_mem_mb"] >= 0
    # Opacus computes the same estimator: its gradient matches gradaccum's
    hooks = [c["variants"]["opacus_hooks"] for c in result["cases"]]
    assert all(v["supported"] and v["rel_err_vs_gradaccum"] <= 1e-5 for v in hooks)
    # ghost clipping runs on the CNN; on GPT-2 Opacus refuses the tied embedding
    ghost = {c["name"]: c["variants"]["opacus_ghost"] for c in result["cases"]}
    assert ghost["alexnet"]["supported"] and ghost["alexnet"]["rel_err_vs_gradaccum"] <= 1e-5
    assert not ghost["gpt2 T=16"]["supported"] and "tying" in ghost["gpt2 T=16"]["reason"]
    assert set(result["reference_errors"]) == {"gpt2", "alexnet"}
    assert result["max_rel_err"] <= 1e-5
    assert result["opacus_max_rel_err_vs_gradaccum"] <= 1e-5
    for key in ("overhead_ratio", "opacus_overhead_ratio", "memory_ratio"):
        assert result[key] > 0
    table = format_table(result)
    assert "not supported" in table and "opacus_hooks" in table and "gradaccum" in table
