"""Bench: does the budget hold? Peak memory of sharded fine-tuning against the budget given.

Gemma 3 270M (LoRA and full fine-tuning, sequence length 256) runs under a ladder of
budgets, from the plan's smallest feasible one up, each run in its own fresh process
(``bench.memory_worker``), and its whole-process peak resident set (VmHWM) is set against
the budget. A budget holds when ``peak <= budget``; ``worst_peak_over_budget`` is the
largest ratio seen (<= 1.0 is the promise). The plot (``docs/memory_budget.png`` when
``plot`` is given) shows peak against budget with the line peak = budget.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gradaccum.bench.memory import _child, _folder

MiB = 2**20
STEPS_UP_MB = (256, 768)  # budgets above the trimming allocator's smallest


def _run(base: dict[str, Any], budget: int | str, shards: str, full: bool) -> dict[str, Any]:
    cfg = {**base, "budget": budget, "method": "full" if full else "lora", "shard_dir": shards}
    if full:  # training rewrites the shards: a fresh working copy each time
        shards = f"{base['scratch']}/full-shards"
        shutil.rmtree(shards, ignore_errors=True)
        _child({**base["setup"], "shard_dirs": [shards]})
        cfg["shard_dir"] = shards
    out = _child({k: v for k, v in cfg.items() if k not in ("setup", "scratch")})
    if full:
        shutil.rmtree(shards, ignore_errors=True)
        shutil.rmtree(f"{shards}-grads", ignore_errors=True)
    return {
        "method": cfg["method"],
        "budget_mb": out["budget_mb"],
        "peak_mb": out["peak_mb"],
        "tokens_per_s": out["tokens_per_s"],
        "checkpointing": out["checkpointing"],
        "allocator": out["allocator"],
        "micro_batch_size": out["micro_batch_size"],
    }


def run(quick: bool = False, seed: int = 0, plot: Path | None = None) -> dict[str, Any]:
    """Sweep the budgets of the module docstring; ``plot``: where to draw the figure."""
    model = "random:gemma3" if quick else "gemma3-270m"
    setup = {"runner": "setup", "model": model, "folder": str(_folder(model))}
    lora_shards = str(_folder(model)) + "-shards"
    folder = _child({**setup, "shard_dirs": [lora_shards]})
    scratch = Path(lora_shards).parent / "budget-sweep"
    scratch.mkdir(parents=True, exist_ok=True)
    base = {
        "runner": "gradaccum",
        "model": model,
        "folder": folder["folder"],
        "precision": "fp32",
        "seed": seed,
        "seq_len": 32 if quick else 256,
        "steps": 2 if quick else 3,
        "global_batch": 2,
        "setup": setup,
        "scratch": str(scratch),
    }
    rows = []
    try:
        for full in (False, True):
            rows.append(_run(base, "min", lora_shards, full))
            if quick:  # one point above the smallest: the ladder is the same code
                continue
            fast = _run(base, "fast", lora_shards, full)
            rows.append(fast)
            for extra in STEPS_UP_MB[-1:] if full else STEPS_UP_MB:  # full: slow runs
                budget = int((fast["budget_mb"] + extra) * MiB)
                rows.append(_run(base, budget, lora_shards, full))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "quick": quick,
        "model": model,
        "runs": rows,
        "worst_peak_over_budget": max(r["peak_mb"] / r["budget_mb"] for r in rows),
        "budget_held": all(r["peak_mb"] <= r["budget_mb"] for r in rows),
    }
    if plot is not None:
        draw(result, Path(plot))
    return result


def draw(result: dict[str, Any], path: Path) -> None:
    """Peak against budget, one series per method, with the line peak = budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    budgets = [r["budget_mb"] for r in result["runs"]]
    line = [min(budgets) * 0.9, max(budgets) * 1.05]
    ax.plot(line, line, color="grey", linestyle="--", label="peak = budget")
    for method, marker in (("lora", "o"), ("full", "s")):
        runs = [r for r in result["runs"] if r["method"] == method]
        ax.plot(
            [r["budget_mb"] for r in runs],
            [r["peak_mb"] for r in runs],
            marker=marker,
            label=f"{method} fine-tuning",
        )
    ax.set_xlabel("--memory-budget (MiB)")
    ax.set_ylabel("measured peak RSS of the process (MiB)")
    ax.set_title(f"{result['model']}, sequence length 256, gradaccum shards")
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(result, indent=1))


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'method':6} {'budget MiB':>10} {'peak MiB':>9} {'peak/budget':>11} {'tok/s':>7}"]
    for r in result["runs"]:
        lines.append(
            f"{r['method']:6} {r['budget_mb']:>10.0f} {r['peak_mb']:>9.0f} "
            f"{r['peak_mb'] / r['budget_mb']:>11.3f} {r['tokens_per_s']:>7.1f}"
        )
    held = "held" if result["budget_held"] else "NOT held"
    lines.append(
        f"{result['model']}: budget {held} in every run; worst peak/budget "
        f"{result['worst_peak_over_budget']:.3f}"
    )
    return "\n".join(lines)
