"""scikit-learn's labelled digits, upsampled, split, and optionally corrupted heavy-tailed.

The corruption is built so that the per-sample gradient noise is heavy-tailed: a fraction
of the training samples get a wrong label (uniform over the other classes) AND a loss
weight drawn from a Pareto distribution with tail index ``alpha`` (scale 1; for
``alpha <= 2`` its variance is infinite). A sample's gradient is its weight times its
cross-entropy gradient, so the gradients of the corrupted samples have a Pareto tail
and point, on average, nowhere useful. Clean samples keep weight 1; the test set is clean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLASSES = 10


@dataclass(frozen=True)
class Digits:
    """Training and test images (N, 1, size, size) in [0, 1] with their labels."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def load_digits(size: int = 32, test_fraction: float = 0.2) -> Digits:
    """The 1797 8x8 digits, bilinearly upsampled to ``size``; a fixed (seed 0) test split."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = round(len(x) * test_fraction)
    test, train = order[:cut], order[cut:]
    return Digits(x[train], y[train], x[test], y[test])


def corrupt(
    y: Tensor, fraction: float, alpha: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(labels, loss weights): ``fraction`` of the samples relabelled wrongly, weighted Pareto."""
    n = len(y)
    picked = torch.randperm(n, generator=gen)[: round(n * fraction)]
    labels = y.clone()
    labels[picked] = (
        y[picked] + torch.randint(1, CLASSES, (len(picked),), generator=gen)
    ) % CLASSES
    weights = torch.ones(n)
    u = torch.rand(len(picked), generator=gen, dtype=torch.float64)
    weights[picked] = (1.0 - u).pow(-1.0 / alpha).float()  # Pareto(alpha), scale 1
    return labels, weights


class WeightedCrossEntropy:
    """Summed per-sample cross-entropy times each sample's weight; batch is (x, y, w)."""

    def count(self, batch: tuple[Tensor, Tensor, Tensor]) -> int:
        return int(batch[0].shape[0])

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x, y, w = batch
        return (F.cross_entropy(model(x), y, reduction="none") * w).sum()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 512) -> float:
    """Fraction of ``x`` classified as ``y``, in eval mode."""
    was = model.training
    model.eval()
    right = sum(
        int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
        for i in range(0, len(x), batch)
    )
    model.train(was)
    return right / len(x)
