"""The PS-Clip experiment on digits: AlexNet-style CNN, clean and heavy-tailed labels.

Tuning, the same for every method: a grid of the same number of runs per method (sgdm has
no threshold, so its grid has as many learning rates as the others have (lr, factor)
pairs), each from the same initial weights (seed ``TUNE_SEED``) on the same batches of
80% of the training set for ``tune_steps`` steps, scored by accuracy on the other, clean
20%. The best pair is then run from ``seeds`` other initial weights on the whole training
set and scored on the test set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradaccum.experiments.noisy_digits import (
    Digits,
    WeightedCrossEntropy,
    accuracy,
    corrupt,
)
from gradaccum.experiments.psclip_methods import (
    METHODS,
    Contestant,
    make_engine,
    race,
    reference_norms,
)
from gradaccum.models.alexnet import AlexNet

VARIANTS = ("clean", "heavy_tailed")
TUNE_SEED = 1000
Batch = tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class DigitsSetting:
    """Sizes and grids of the digits part."""

    size: int
    width: float
    micro_batch: int
    k: int
    steps: int
    eval_every: int
    tune_steps: int
    lrs: tuple[float, ...]
    factors: tuple[float, ...]
    sgdm_lrs: tuple[float, ...]
    corrupt_fraction: float
    pareto_alpha: float
    calibration_windows: int


def _model(s: DigitsSetting, seed: int) -> AlexNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AlexNet(classes=10, in_channels=1, width=s.width)


def training_set(
    x: Tensor, y: Tensor, variant: str, s: DigitsSetting, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(x, labels, loss weights): clean, or corrupted as ``noisy_digits`` says (seeded)."""
    if variant == "clean":
        return x, y, torch.ones(len(y))
    gen = torch.Generator().manual_seed(seed)
    labels, weights = corrupt(y, s.corrupt_fraction, s.pareto_alpha, gen)
    return x, labels, weights


def batches(data: tuple[Tensor, Tensor, Tensor], s: DigitsSetting, steps: int, seed: int) -> list:
    """``steps`` global batches of K x micro_batch samples, drawn with replacement."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, len(data[0]), (s.micro_batch * s.k,), generator=gen)
        out.append(tuple(t[idx] for t in data))
    return out


def _thresholds(model: AlexNet, data_batches: list, s: DigitsSetting) -> dict[str, float]:
    return reference_norms(
        model,
        list(model.parameters()),
        WeightedCrossEntropy(),
        data_batches[: s.calibration_windows],
        s.micro_batch,
    )


def grid(method: str, s: DigitsSetting) -> list[tuple[float, float | None]]:
    """The (lr, threshold factor) pairs tried for ``method``."""
    if method == "sgdm":
        return [(lr, None) for lr in s.sgdm_lrs]
    return [(lr, f) for lr in s.lrs for f in s.factors]


def tune(digits: Digits, variant: str, s: DigitsSetting) -> dict[str, dict[str, Any]]:
    """Each method's best (lr, factor) by clean validation accuracy, and every score."""
    n = len(digits.train_y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(TUNE_SEED))
    val, fit = order[: n // 5], order[n // 5 :]
    data = training_set(digits.train_x[fit], digits.train_y[fit], variant, s, TUNE_SEED)
    fit_batches = batches(data, s, s.tune_steps, TUNE_SEED)
    base = _model(s, TUNE_SEED)
    norms = _thresholds(base, fit_batches, s)
    loss = WeightedCrossEntropy()
    out = {}
    for method in METHODS:
        scores = []
        for lr, factor in grid(method, s):
            model = copy.deepcopy(base)
            threshold = None if factor is None else factor * norms[method]
            engine = make_engine(
                model, list(model.parameters()), method, lr, threshold, s.micro_batch
            )
            for b in fit_batches:
                engine.step(b, loss)
            acc = accuracy(model, digits.train_x[val], digits.train_y[val])
            scores.append([lr, factor, acc])
        best = max(scores, key=lambda r: r[2])
        out[method] = {"lr": best[0], "factor": best[1], "val_accuracy": best[2], "grid": scores}
    return out


def train_seed(
    digits: Digits, variant: str, s: DigitsSetting, tuned: dict[str, dict[str, Any]], seed: int
) -> dict[str, Any]:
    """Every method from the same initial weights on the same batches; test accuracy curves."""
    data = training_set(digits.train_x, digits.train_y, variant, s, seed)
    data_batches = batches(data, s, s.steps, seed)
    base = _model(s, seed)
    norms = _thresholds(base, data_batches, s)
    contestants = {}
    for method in METHODS:
        model = copy.deepcopy(base)
        cfg = tuned[method]
        threshold = None if cfg["factor"] is None else cfg["factor"] * norms[method]
        engine = make_engine(
            model, list(model.parameters()), method, cfg["lr"], threshold, s.micro_batch
        )
        contestants[method] = Contestant(
            step=lambda b, e=engine: e.step(b, WeightedCrossEntropy()),
            evaluate=lambda m=model: accuracy(m, digits.test_x, digits.test_y),
        )
    result = race(contestants, data_batches, s.eval_every)
    result["reference_norms"] = norms
    if variant == "heavy_tailed":
        w = data[2][data[2] != 1]
        result["corrupted"] = {"samples": len(w), "max_weight": float(w.max()) if len(w) else 1.0}
    return result
