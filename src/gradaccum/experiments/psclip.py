"""Experiment: PS-Clip-SGD against SGD with momentum, global and micro-batch clipping.

Every method steps through the engine on the same K micro-batches per step, for the same
number of steps (same samples, same compute budget); they differ only in where they clip
(``psclip_methods``). Three settings:

* ``digits_clean``: scikit-learn's digits (upsampled to 32x32), AlexNet-style CNN;
* ``digits_heavy_tailed``: the same with a fraction of the labels wrong and weighted by a
  Pareto-tailed loss weight (``noisy_digits``), so per-sample gradient noise is heavy-tailed;
* ``gemma``: LoRA fine-tuning of Gemma 3 270M on the default corpus (``psclip_gemma``).

Digits methods are tuned per setting with the same grid size each (``psclip_digits``);
the reported numbers are test accuracy and held-out perplexity against training wall-clock
(steps only; evaluation is not timed), mean and spread over seeds. The methods of a seed
train in lockstep, so load on a shared machine hits them alike.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gradaccum.bench.timing import one_thread
from gradaccum.experiments.noisy_digits import load_digits
from gradaccum.experiments.psclip_digits import VARIANTS, DigitsSetting, train_seed, tune
from gradaccum.experiments.psclip_gemma import GemmaSetting, run_gemma
from gradaccum.experiments.psclip_methods import METHODS

LRS = (0.01, 0.03, 0.1)
FACTORS = (0.1, 0.3, 1.0)
SGDM_LRS = (0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3)
"""sgdm has one hyper-parameter: as many learning rates as the others' (lr, factor) pairs."""
DIGITS = DigitsSetting(32, 0.125, 16, 4, 150, 15, 100, LRS, FACTORS, SGDM_LRS, 0.2, 1.5, 2)
GEMMA = GemmaSetting("gemma3-270m", 64, 2, 2, 6, 3, 6, 0.01, 8, 1)
"""Gemma's lr is not tuned: at 0.01, SGD's first update has norm ~0.2 (the initial window
gradient norm is ~23), about what AdamW at lr 1e-4 does to its 1.9M LoRA weights."""
QUICK_DIGITS = DigitsSetting(32, 0.0625, 4, 2, 4, 2, 2, (0.05,), (0.3,), (0.05,), 0.2, 1.5, 1)
QUICK_GEMMA = GemmaSetting("random:gemma3", 16, 2, 2, 2, 1, 4, 0.1, 4, 1)
"""--quick: one-point grids, a few steps, the tiny random Gemma 3 (tests)."""


def _spread(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: final metric and training seconds (mean, std over seeds), the median
    over seeds of its time over sgdm's in the same seed, and how often it clipped."""
    out = {}
    base = [r["curves"]["sgdm"][-1][1] for r in runs]
    for m in METHODS:
        finals = [r["curves"][m][-1] for r in runs]
        out[m] = {
            "metric": _spread([f[2] for f in finals]),
            "seconds": _spread([f[1] for f in finals]),
            "time_vs_sgdm": statistics.median(f[1] / b for f, b in zip(finals, base, strict=True)),
            "clipped": statistics.fmean(r["clipped"][m] for r in runs),
        }
    return out


def _digits(s: DigitsSetting, seeds: int, settings: dict, runs: dict) -> dict[str, int]:
    """Tune and train both digits settings into ``settings`` and ``runs``; the split sizes."""
    digits = load_digits(s.size)
    for variant in VARIANTS:
        tuned = tune(digits, variant, s)
        name = f"digits_{variant}"
        runs[name] = [train_seed(digits, variant, s, tuned, seed) for seed in range(seeds)]
        settings[name] = {"metric": "test accuracy", "tuned": tuned}
        settings[name]["methods"] = summarize(runs[name])
    return {"train": len(digits.train_y), "test": len(digits.test_y)}


def run(
    quick: bool = False,
    seeds: int = 3,
    out: str | Path = "runs/experiments/psclip",
    skip_gemma: bool = False,
) -> dict:
    """Tune and train every setting for ``seeds`` seeds; write psclip.json and psclip.png.

    One thread: on a small shared machine a second OpenMP thread mostly waits for a core.
    """
    s, g = (QUICK_DIGITS, QUICK_GEMMA) if quick else (DIGITS, GEMMA)
    settings: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    with one_thread():
        sizes = _digits(s, seeds, settings, runs)
        if not skip_gemma:
            factors = {m: v["factor"] for m, v in settings["digits_clean"]["tuned"].items()}
            lm = run_gemma(g, factors, seeds)
            runs["gemma"] = lm.pop("runs")
            settings["gemma"] = {"metric": "held-out perplexity", "factors": factors, **lm}
            settings["gemma"]["methods"] = summarize(runs["gemma"])
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "experiment": "psclip",
        "quick": quick,
        "seeds": list(range(seeds)),
        "digits_setting": asdict(s),
        "digits_sizes": sizes,
        "gemma_setting": None if skip_gemma else asdict(g),
        "settings": settings,
        "runs": runs,
        "json": str(folder / "psclip.json"),
        "plot": str(folder / "psclip.png"),
    }
    (folder / "psclip.json").write_text(json.dumps(result, indent=1))
    plot(result, folder / "psclip.png")
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """One panel per setting: metric against training seconds, mean over seeds +- 1 std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, (name, setting) in zip(axes[0], settings.items(), strict=True):
        for m in METHODS:
            curves = [r["curves"][m] for r in result["runs"][name]]
            rows = range(len(curves[0]))
            secs = [statistics.fmean(c[i][1] for c in curves) for i in rows]
            vals = [[c[i][2] for c in curves] for i in rows]
            mean = [statistics.fmean(v) for v in vals]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            ax.plot(secs, mean, label=m)
            lo = [a - b for a, b in zip(mean, std, strict=True)]
            hi = [a + b for a, b in zip(mean, std, strict=True)]
            ax.fill_between(secs, lo, hi, alpha=0.2)
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("training wall-clock (s, evaluation excluded)")
        ax.set_ylabel(setting["metric"])
        if "perplexity" in setting["metric"]:
            ax.set_yscale("log")
        ax.legend()
    fig.suptitle(f"PS-Clip experiment, {len(result['seeds'])} seeds (mean +- std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(result: dict) -> str:
    """One row per setting and method: final metric, training time, tuned lr and factor."""
    s = result["digits_setting"]
    lines = [
        f"psclip experiment: {len(result['seeds'])} seeds (mean +- std); digits "
        f"{s['size']}x{s['size']} ({result['digits_sizes']['train']} train / "
        f"{result['digits_sizes']['test']} test), AlexNet-style x{s['width']}, "
        f"{s['steps']} steps of K={s['k']} x {s['micro_batch']}; heavy-tailed: "
        f"{s['corrupt_fraction']:.0%} labels wrong, Pareto({s['pareto_alpha']}) loss weights",
        f"{'setting':<22}{'method':<8}{'final metric':>18}{'train s':>16}{'time/sgdm':>11}"
        f"{'clipped':>9}{'lr':>8}{'factor':>8}",
    ]
    for name, setting in result["settings"].items():
        higher = setting["metric"] == "test accuracy"
        finals = {m: v["metric"]["mean"] for m, v in setting["methods"].items()}
        best = (max if higher else min)(finals.values())
        for m, v in setting["methods"].items():
            cfg = setting["tuned"][m] if "tuned" in setting else {}
            lr = cfg.get("lr", result["gemma_setting"]["lr"] if name == "gemma" else None)
            factor = cfg.get("factor") if cfg else setting.get("factors", {}).get(m)
            lines.append(
                f"{name:<22}{m:<8}{_pm(v['metric'], 4):>18}{_pm(v['seconds'], 1):>16}"
                f"{v['time_vs_sgdm']:>10.2f}x{v['clipped']:>9.0%}{lr:>8g}"
                f"{'-' if factor is None else f'{factor:g}':>8}"
                f"{' *' if finals[m] == best else ''}"
            )
    lines.append(
        f"* best mean; metric: test accuracy (digits), held-out perplexity (gemma); clipped: "
        f"steps whose clipping changed the gradient; factor x the initial mean norm of what "
        f"the method clips = its threshold; json: {result['json']}; plot: {result['plot']}"
    )
    return "\n".join(lines)


def _pm(v: dict[str, float], digits: int) -> str:
    return f"{v['mean']:.{digits}f} +- {v['std']:.{digits}f}"
