import json

from accelerate.state import AcceleratorState, GradientState

from gradaccum.bench.accumulation import format_table, run


def test_quick_bench_is_exact_where_accelerate_is_not() -> None:
    result = run(quick=True)
    assert result["ks"] == [2, 4, 8]
    assert [d["k"] for d in result["per_k"]] == result["ks"]
    assert result["tokens"] < result["padded_tokens"]
    for d in result["per_k"]:
        assert d["micro_batch_size"] * d["k"] == result["global_batch"]
        for side in ("gradaccum", "accelerate"):
            assert d[side]["tokens_per_s"] > 0
            assert d[side]["ratio_vs_one_pass"] > 0
        assert d["gradaccum"]["max_rel_err"] <= 1e-5
    assert result["max_rel_err"] <= 1e-5
    assert result["accelerate_max_rel_err"] > 1e-3
    assert result["throughput_ratio_vs_one_pass"] > 0
    assert result["throughput_ratio_vs_accelerate"] > 0
    assert json.loads(json.dumps(result)) == result
    table = format_table(result)
    assert "gradaccum" in table and "accelerate" in table
    assert not AcceleratorState._shared_state and not GradientState._shared_state
