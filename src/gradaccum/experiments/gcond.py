"""Experiment: GCond's setting at small scale, every combiner under the same budget.

Self-supervised masked reconstruction (Limarenko et al. 2025, arXiv 2509.07252): a
MobileNetV3-Small-like encoder-decoder sees images with random squares blanked out and
reconstructs the whole image. Two tasks share every parameter: an L1 loss and an SSIM
loss (1 - SSIM), weighted 0.85 and 0.15 inside the task loss, so every method sees the
same weighted tasks. Data: digits and photograph patches shipped with scikit-learn
(``experiments.images``).

Every method (weighted sum, PCGrad, CAGrad, GradNorm, GCond classical and stochastic)
starts from the same weights and steps on the same micro-batches: the same number of
optimizer steps of K micro-batches each. An ablation, ``gcond_no_resolution``, is classical
GCond with its conflict threshold at cos -0.9998, so it never resolves a conflict: GCond's
momentum and optimizer setting alone, to tell them apart from its conflict resolution.

The methods of a seed train in lockstep, one step each in turn (order reversed every
step), so load on a shared machine hits them alike; each step is timed alone and
held-out evaluation is not timed.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradaccum.bench.timing import one_thread
from gradaccum.engine import Accumulator
from gradaccum.experiments.images import ImageSplit, load_images, random_mask
from gradaccum.experiments.ssim import ssim
from gradaccum.models.vision import MaskedAutoencoder
from gradaccum.multitask import make_combiner

TASK_WEIGHTS = {"l1": 0.85, "ssim": 0.15}
NEVER = (-1.0, -0.9999, -0.9998)
"""GCond thresholds under which no pair of real task gradients counts as conflicting."""
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "weighted_sum": ("linear", {}),
    "pcgrad": ("pcgrad", {}),
    "cagrad": ("cagrad", {"c": 0.5}),
    "gradnorm": ("gradnorm", {}),
    "gcond_classical": ("gcond", {"stochastic": False}),
    "gcond_stochastic": ("gcond", {"stochastic": True}),
    "gcond_no_resolution": ("gcond", {"stochastic": False, "thresholds": NEVER}),
}
SEEDED = ("pcgrad", "gcond")
"""Combiners that take a ``seed`` (their random task orders)."""
Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Setting:
    """Sizes and hyper-parameters of one run of the experiment."""

    size: int
    width: float
    micro_batch: int
    k: int
    steps: int
    eval_every: int
    lr: float
    mask_patch: int
    mask_ratio: float
    patches_per_image: int
    held_out: int | None


FULL = Setting(16, 0.35, 8, 4, 100, 10, 2e-3, 2, 0.5, 700, None)
QUICK = Setting(16, 0.25, 4, 2, 3, 3, 2e-3, 2, 0.5, 40, 48)


class ReconstructionLoss:
    """Task losses of a (masked, target) micro-batch, summed over its images."""

    tasks = tuple(TASK_WEIGHTS)

    def count(self, mb: Batch) -> dict[str, int]:
        return dict.fromkeys(self.tasks, int(mb[0].shape[0]))

    def __call__(self, model: nn.Module, mb: Batch, tasks: Sequence[str]) -> dict[str, Tensor]:
        masked, target = mb
        out = model(masked)
        losses = {}
        if "l1" in tasks:
            losses["l1"] = TASK_WEIGHTS["l1"] * (out - target).abs().mean((1, 2, 3)).sum()
        if "ssim" in tasks:
            losses["ssim"] = TASK_WEIGHTS["ssim"] * (1 - ssim(out, target)).sum()
        return losses


def masked(images: Tensor, s: Setting, gen: torch.Generator) -> Batch:
    """(masked images, targets): random squares of each image set to 0."""
    return images * random_mask(tuple(images.shape), s.mask_patch, s.mask_ratio, gen), images


@torch.no_grad()
def evaluate(model: nn.Module, held_out: Batch) -> tuple[float, float]:
    """Held-out mean L1 and mean SSIM, with BatchNorm in eval mode."""
    model.eval()
    l1, sim = [], []
    for start in range(0, len(held_out[0]), 256):
        x, y = held_out[0][start : start + 256], held_out[1][start : start + 256]
        out = model(x)
        l1.append((out - y).abs().mean((1, 2, 3)))
        sim.append(ssim(out, y))
    model.train()
    return float(torch.cat(l1).mean()), float(torch.cat(sim).mean())


def _engine(model: nn.Module, method: str, s: Setting, seed: int) -> Accumulator:
    name, kw = METHODS[method]
    kw = {**kw, "seed": seed} if name in SEEDED else kw
    # GCond smooths the combined gradient itself: the optimizer's momentum is turned off.
    betas = (0.0 if name == "gcond" else 0.9, 0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=betas, weight_decay=0.0)
    return Accumulator(
        model,
        opt,
        micro_batch_size=s.micro_batch,
        combiner=make_combiner(name, **kw),
        shared_params=list(model.head.parameters()),
    )


def _resolved(info: dict[str, float]) -> bool:
    """Whether a combiner changed the task gradients in this step (PCGrad, GCond)."""
    return info.get("pcgrad/projections", 0.0) > 0 or info.get("gcond/iters", 0.0) > 0


def train_seed(s: Setting, data: ImageSplit, seed: int) -> dict[str, Any]:
    """Every method from the same start on the same batches.

    Returns ``curves`` (per method, rows of step, training seconds, held-out L1 and SSIM)
    and ``resolved`` (per method, the fraction of steps whose task gradients it changed).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = MaskedAutoencoder(channels=1, width=s.width)
        models = {m: copy.deepcopy(base) for m in METHODS}
        engines = {m: _engine(models[m], m, s, seed) for m in METHODS}
    held = data.held_out if s.held_out is None else data.held_out[: s.held_out]
    held_batch = masked(held, s, torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    loss = ReconstructionLoss()
    clock = dict.fromkeys(METHODS, 0.0)
    resolved = dict.fromkeys(METHODS, 0)
    curves = {m: [[0, 0.0, *evaluate(models[m], held_batch)]] for m in METHODS}
    names = list(METHODS)
    for step in range(1, s.steps + 1):
        idx = torch.randint(0, len(data.train), (s.micro_batch * s.k,), generator=gen)
        batch = masked(data.train[idx], s, gen)
        for m in names if step % 2 else reversed(names):
            start = time.perf_counter()
            info = engines[m].step(batch, loss).info
            clock[m] += time.perf_counter() - start
            resolved[m] += _resolved(info)
        if step % s.eval_every == 0 or step == s.steps:
            for m in names:
                curves[m].append([step, clock[m], *evaluate(models[m], held_batch)])
    return {"curves": curves, "resolved": {m: n / s.steps for m, n in resolved.items()}}


def _spread(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: final held-out L1, SSIM and training seconds, mean and std over seeds.

    ``time_vs_weighted_sum`` is the median over seeds of the ratio within a seed (the
    methods of a seed share the machine's load); ``resolved`` is the mean over seeds.
    """
    out = {}
    base = [r["curves"]["weighted_sum"][-1][1] for r in runs]
    for m in METHODS:
        finals = [r["curves"][m][-1] for r in runs]
        out[m] = {
            "l1": _spread([f[2] for f in finals]),
            "ssim": _spread([f[3] for f in finals]),
            "seconds": _spread([f[1] for f in finals]),
            "time_vs_weighted_sum": statistics.median(
                f[1] / b for f, b in zip(finals, base, strict=True)
            ),
            "resolved": statistics.fmean(r["resolved"][m] for r in runs),
        }
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """Held-out L1 against training seconds per method: mean over seeds, band of +- 1 std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in METHODS:
        curves = [r["curves"][m] for r in result["runs"]]
        secs = [statistics.fmean(c[i][1] for c in curves) for i in range(len(curves[0]))]
        l1 = [[c[i][2] for c in curves] for i in range(len(curves[0]))]
        mean = [statistics.fmean(v) for v in l1]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in l1]
        ax.plot(secs, mean, label=m.replace("_", " "))
        lo = [a - b for a, b in zip(mean, std, strict=True)]
        hi = [a + b for a, b in zip(mean, std, strict=True)]
        ax.fill_between(secs, lo, hi, alpha=0.2)
    ax.set_xlabel("training wall-clock (s, evaluation excluded)")
    ax.set_ylabel("held-out L1")
    ax.set_title(f"masked reconstruction, {len(result['seeds'])} seeds (mean +- std)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(quick: bool = False, seeds: int = 3, out: str | Path = "runs/experiments/gcond") -> dict:
    """Train every method for ``seeds`` seeds; write gcond.json and gcond_l1.png to ``out``.

    One thread: on a small shared machine a second OpenMP thread mostly waits for a core.
    """
    s = QUICK if quick else FULL
    if s.k % len(TASK_WEIGHTS):
        raise ValueError("stochastic GCond needs K to be a multiple of the task count")
    with one_thread():
        data = load_images(s.size, patches_per_image=s.patches_per_image)
        runs = [train_seed(s, data, seed) for seed in range(seeds)]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "experiment": "gcond",
        "quick": quick,
        "seeds": list(range(seeds)),
        "setting": asdict(s),
        "task_weights": TASK_WEIGHTS,
        "train_images": len(data.train),
        "held_out_images": len(data.held_out) if s.held_out is None else s.held_out,
        "params": sum(p.numel() for p in MaskedAutoencoder(1, s.width).parameters()),
        "methods": summarize(runs),
        "runs": runs,
        "json": str(folder / "gcond.json"),
        "plot": str(folder / "gcond_l1.png"),
    }
    (folder / "gcond.json").write_text(json.dumps(result, indent=1))
    plot(result, folder / "gcond_l1.png")
    return result


def format_table(result: dict) -> str:
    """One row per method: final held-out L1 and SSIM, and training time, mean +- std."""
    s = result["setting"]
    lines = [
        f"gcond experiment: masked reconstruction ({s['size']}x{s['size']}, "
        f"{result['train_images']} train / {result['held_out_images']} held-out images), "
        f"MobileNetV3-Small-like x{s['width']} autoencoder ({result['params']} params), "
        f"{s['steps']} steps of K={s['k']} x {s['micro_batch']}, AdamW lr {s['lr']}, "
        f"{len(result['seeds'])} seeds (mean +- std)",
        f"{'method':<20}{'held-out L1':>18}{'held-out SSIM':>18}{'train s':>16}"
        f"{'time/wsum':>11}{'resolved':>10}",
    ]
    best_l1 = min(v["l1"]["mean"] for v in result["methods"].values())
    for m, v in result["methods"].items():
        mark = " *" if math.isclose(v["l1"]["mean"], best_l1) else ""
        lines.append(
            f"{m:<20}{_pm(v['l1'], 4):>18}{_pm(v['ssim'], 4):>18}{_pm(v['seconds'], 1):>16}"
            f"{v['time_vs_weighted_sum']:>10.2f}x{v['resolved']:>10.0%}{mark}"
        )
    lines.append(
        "* lowest mean L1; resolved: steps whose task gradients the combiner changed "
        f"(PCGrad, GCond); json: {result['json']}; plot: {result['plot']}"
    )
    return "\n".join(lines)


def _pm(v: dict[str, float], digits: int) -> str:
    return f"{v['mean']:.{digits}f} +- {v['std']:.{digits}f}"
