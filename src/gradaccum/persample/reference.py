"""The slow, obviously correct reference: each sample's gradient alone, clipped, averaged.

For tests. With n samples holding N loss-bearing items in all, sample i's loss is
``(n / N) * (sum of its item losses)``, so that the mean over samples is the window's mean
loss and, unclipped, the average of the sample gradients is the big-batch gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gradaccum.plan import Batch, batch_len
from gradaccum.transforms.base import total_norm


def sample_grads(
    model: nn.Module,
    samples: Sequence[Batch],
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    count: Callable[[Batch], int] | None = None,
) -> list[list[Tensor]]:
    """Each one-sample batch's gradient g_i over the trained parameters, one backward each."""
    count = count or getattr(loss_fn, "count", None) or batch_len
    total = sum(count(s) for s in samples)
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for sample in samples:
        loss = loss_fn(model, sample) * (len(samples) / total)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append(
            [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        )
    return out


def clipped_reference(
    model: nn.Module,
    samples: Sequence[Batch],
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    lam: float,
    count: Callable[[Batch], int] | None = None,
) -> list[Tensor]:
    """``(1/n) sum_i min(1, lam/||g_i||) g_i`` over one-sample batches, per trained parameter."""
    grads = sample_grads(model, samples, loss_fn, count)
    total = [torch.zeros_like(g) for g in grads[0]]
    for g in grads:
        norm = float(total_norm(g))
        coef = min(1.0, lam / norm) if norm > 0 else 1.0
        for acc, x in zip(total, g, strict=True):
            acc.add_(x, alpha=coef / len(grads))
    return total
