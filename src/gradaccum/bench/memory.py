"""Bench: fine-tuning under a memory budget against plain transformers + peft.

Every configuration runs in its own fresh process (``bench.memory_worker``), so each peak
resident set (VmHWM, kept across the engine's probe resets) is that run's alone, imports
included. gradaccum runs under its plan's smallest feasible budget: weights in shards,
chunked cross-entropy, per-block checkpointing, gradients and AdamW moments on disk for full
fine-tuning. Preparing a model (GGUF conversion, random weights, writing shards) happens
once beforehand in a separate process and is reported apart. Tokens per second count the
steps after the first. gradaccum runs at its plan's smallest budget for the trimming
allocator mode ("fast"); for Gemma also at the strict mode's smallest budget ("min"), and
in bf16 with its frozen weights stored in bf16 (what autocast would cast them to anyway).
The three Gemma LoRA runs behind the speed ratios (baseline,
fp32, bf16) run twice in alternation and the faster of each counts: single runs on a
shared machine drift.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gradaccum.models.gguf_cache import cache_dir

FULL_MODELS = ("gemma3-270m", "random:gpt2-full", "random:qwen2.5-full")
QUICK_MODELS = ("random:gemma3",)
METHODS = ("lora", "full")


def _child(cfg: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gradaccum.bench.memory_worker", json.dumps(cfg)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"bench child {cfg['runner']} {cfg.get('model')} failed:\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _folder(model: str) -> Path:
    name = model.replace(":", "-").replace("/", "-")
    return cache_dir() / "bench-memory" / name


def _variants(model: str) -> list[tuple[str, str, str, str]]:
    """(runner, method, precision, budget) of every run for ``model``, in order."""
    runs = []
    for method in METHODS:
        runs += [("baseline", method, "fp32", "-"), ("gradaccum", method, "fp32", "fast")]
    if model == "gemma3-270m":
        runs += [("gradaccum", "lora", "fp32", "min"), ("gradaccum", "lora", "bf16", "fast")]
        # The speed goals rest on these three: a second round, so that a burst of other
        # work on the machine during one run does not decide a ratio.
        runs += [
            ("baseline", "lora", "fp32", "-"),
            ("gradaccum", "lora", "fp32", "fast"),
            ("gradaccum", "lora", "bf16", "fast"),
        ]
    return runs


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Measure every configuration of ``_variants``; see the module docstring."""
    models = QUICK_MODELS if quick else FULL_MODELS
    shape = {"seq_len": 32 if quick else 256, "steps": 2 if quick else 3, "global_batch": 2}
    rows: list[dict[str, Any]] = []
    prepared: dict[str, float] = {}
    scratch = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=cache_dir()))
    try:
        for model in models:
            lora_shards = str(_folder(model)) + "-shards"
            setup = {"runner": "setup", "model": model, "folder": str(_folder(model))}
            folder = _child({**setup, "shard_dirs": [lora_shards]})
            prepared[model] = folder["convert_seconds"]
            for runner, method, precision, budget in _variants(model):
                shard_dir, disk_dtype = lora_shards, "fp32"
                if runner == "gradaccum" and method == "lora" and precision == "bf16":
                    shard_dir, disk_dtype = f"{lora_shards}-bf16", "bf16"
                    _child({**setup, "shard_dirs": [shard_dir], "disk_dtype": disk_dtype})
                if runner == "gradaccum" and method == "full":  # training rewrites them
                    shard_dir = str(scratch / "full-shards")
                    _child({**setup, "shard_dirs": [shard_dir]})
                cfg = {
                    "runner": runner,
                    "model": model,
                    "folder": folder["folder"],
                    "method": method,
                    "precision": precision,
                    "seed": seed,
                    "shard_dir": shard_dir,
                    "disk_dtype": disk_dtype,
                    "budget": budget,
                    **shape,
                }
                rows.append({**cfg, **_child(cfg)})
                if method == "full" and shard_dir != lora_shards:
                    shutil.rmtree(shard_dir, ignore_errors=True)
                    shutil.rmtree(f"{shard_dir}-grads", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _summary(rows, prepared, models[0], quick)


def _pick(rows: list[dict], **match: Any) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _ratio(rows: list[dict], model: str, precision: str) -> float:
    """gradaccum / baseline (fp32) tokens per second, LoRA, at the fast budget; the best
    run of each side (runs are repeated in alternation; slowdowns come from outside)."""
    ours = _pick(rows, model=model, method="lora", runner="gradaccum", precision=precision)
    ours = [r for r in ours if r["budget"] == "fast"]
    base = _pick(rows, model=model, method="lora", runner="baseline", precision="fp32")
    if not ours or not base:
        return float("nan")
    return max(r["tokens_per_s"] for r in ours) / max(r["tokens_per_s"] for r in base)


def _summary(rows: list[dict], prepared: dict[str, float], main: str, quick: bool) -> dict:
    def peak(runner: str, method: str, budget: str) -> float:
        match = _pick(rows, model=main, runner=runner, method=method, budget=budget)
        return max((r["peak_mb"] for r in match), default=float("nan"))

    return {
        "quick": quick,
        "model": main,
        "gemma_lora_peak_mb": peak("gradaccum", "lora", "fast"),
        "gemma_full_peak_mb": peak("gradaccum", "full", "fast"),
        "gemma_lora_min_budget_peak_mb": peak("gradaccum", "lora", "min"),
        "baseline_lora_peak_mb": peak("baseline", "lora", "-"),
        "baseline_full_peak_mb": peak("baseline", "full", "-"),
        "lora_tokens_per_s_ratio": _ratio(rows, main, "fp32"),
        "lora_bf16_tokens_per_s_ratio": _ratio(rows, main, "bf16"),
        "prepare_seconds": prepared,
        "runs": [
            {
                k: r.get(k)
                for k in (
                    "model",
                    "method",
                    "runner",
                    "precision",
                    "budget",
                    "peak_mb",
                    "tokens_per_s",
                    "budget_mb",
                    "micro_batch_size",
                    "checkpointing",
                    "allocator",
                    "io_per_step",
                    "losses",
                )
            }
            for r in rows
        ],
    }


def format_table(result: dict[str, Any]) -> str:
    """One line per run, then the headline numbers."""
    lines = [
        f"{'model':22} {'method':6} {'runner':10} {'prec':5} {'budget MiB':>10} "
        f"{'peak MiB':>9} {'tok/s':>7} {'mb':>3} {'ckpt':>5} {'alloc':>6} {'I/O MiB/step':>13}"
    ]
    for r in result["runs"]:
        budget = f"{r['budget_mb']:.0f}" if r.get("budget_mb") else "-"
        io = r.get("io_per_step") or []
        io_text = f"{io[-1]['read_mb']:.0f}r/{io[-1]['written_mb']:.0f}w" if io else "-"
        ckpt = {True: "on", False: "off", None: "-"}[r.get("checkpointing")]
        lines.append(
            f"{r['model']:22} {r['method']:6} {r['runner']:10} {r['precision']:5} {budget:>10} "
            f"{r['peak_mb']:>9.0f} {r['tokens_per_s']:>7.1f} {r.get('micro_batch_size') or '-':>3} "
            f"{ckpt:>5} {r.get('allocator') or '-':>6} {io_text:>13}"
        )
    lines.append(
        f"{result['model']}: LoRA peak {result['gemma_lora_peak_mb']:.0f} MiB "
        f"({result['gemma_lora_min_budget_peak_mb']:.0f} at the smallest budget; "
        f"baseline {result['baseline_lora_peak_mb']:.0f}), full peak "
        f"{result['gemma_full_peak_mb']:.0f} MiB (baseline {result['baseline_full_peak_mb']:.0f}); "
        f"LoRA tokens/s x{result['lora_tokens_per_s_ratio']:.2f} of baseline "
        f"(bf16: x{result['lora_bf16_tokens_per_s_ratio']:.2f})"
    )
    prep = ", ".join(f"{m} {s:.0f}s" for m, s in result["prepare_seconds"].items())
    lines.append(f"prepared beforehand (not measured): {prep}")
    return "\n".join(lines)
