"""bench memory: one process per configuration, peaks and speed ratios in the summary."""

from __future__ import annotations

import json

import pytest
import torch

from gradaccum.bench.memory import _child, _summary, format_table, run


def _row(runner, method, peak, tok_s, precision="fp32", budget="fast"):
    return {
        "model": "m",
        "runner": runner,
        "method": method,
        "precision": precision,
        "budget": budget if runner == "gradaccum" else "-",
        "peak_mb": peak,
        "tokens_per_s": tok_s,
        "budget_mb": 700.0 if runner == "gradaccum" else None,
        "micro_batch_size": 2 if runner == "gradaccum" else None,
        "checkpointing": True if runner == "gradaccum" else None,
        "allocator": "trim" if runner == "gradaccum" else None,
        "io_per_step": [{"read_mb": 10.0, "written_mb": 0.0}] if runner == "gradaccum" else None,
        "losses": [1.0],
    }


def test_summary_takes_peaks_and_median_speed_ratios():
    rows = [
        _row("baseline", "lora", 3000, 10),
        _row("gradaccum", "lora", 600, 9),
        _row("gradaccum", "lora", 450, 5, budget="min"),
        _row("gradaccum", "lora", 620, 25, "bf16"),
        _row("baseline", "full", 5000, 5),
        _row("gradaccum", "full", 1500, 4),
    ]
    result = _summary(rows, {"m": 1.0}, "m", quick=False)
    assert result["gemma_lora_peak_mb"] == 620 and result["baseline_full_peak_mb"] == 5000
    assert result["gemma_lora_min_budget_peak_mb"] == 450
    assert result["lora_tokens_per_s_ratio"] == pytest.approx(0.9)
    assert result["lora_bf16_tokens_per_s_ratio"] == pytest.approx(2.5)
    table = format_table(result)
    assert "x0.90 of baseline" in table and "10r/0w" in table
    assert json.loads(json.dumps(result)) == result


@pytest.mark.slow
def test_quick_bench_runs_every_configuration_in_its_own_process():
    result = run(quick=True)
    keys = ("gemma_lora_peak_mb", "gemma_full_peak_mb", "baseline_lora_peak_mb")
    assert all(result[k] > 100 for k in (*keys, "baseline_full_peak_mb"))
    assert result["lora_tokens_per_s_ratio"] > 0
    runs = result["runs"]
    assert {(r["runner"], r["method"]) for r in runs} == {
        (a, b) for a in ("baseline", "gradaccum") for b in ("lora", "full")
    }
    for method in ("lora", "full"):  # same data, same seed: the same first loss
        first = [r["losses"][0] for r in runs if r["method"] == method]
        assert abs(first[0] - first[1]) <= 1e-5 * abs(first[0])


@pytest.fixture(scope="module")
def many_block_model(tmp_path_factory):
    """A random Qwen 2 folder with twelve blocks and its shards: enough blocks for heap
    slack left behind block after block (in forward or backward) to show in the peak."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    folder = tmp_path_factory.mktemp("qwen12")
    config = Qwen2Config(
        hidden_size=512,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=4096,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    shards = str(folder) + "-shards"
    _child({"runner": "setup", "model": "qwen12", "folder": str(folder), "shard_dirs": [shards]})
    return str(folder), shards


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["min", "fast"])
def test_a_sharded_run_stays_under_its_planned_budget(many_block_model, budget):
    folder, shards = many_block_model
    cfg = {
        "runner": "gradaccum",
        "model": "qwen12",
        "folder": folder,
        "method": "lora",
        "precision": "fp32",
        "seed": 0,
        "shard_dir": shards,
        "budget": budget,
        "seq_len": 128,
        "steps": 2,
        "global_batch": 2,
    }
    out = _child(cfg)  # a fresh process: its whole-life peak, imports and loading included
    assert out["allocator"] == ("strict" if budget == "min" else "trim")
    assert out["peak_mb"] <= out["budget_mb"], out["plan"]
