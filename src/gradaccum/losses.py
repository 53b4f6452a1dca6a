"""Sum-reduced losses with their item counts, in the form the engine expects.

Each loss returns the SUM over its loss-bearing items and has a ``count`` method giving
that number of items from the micro-batch alone; the engine divides by the window total.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100


class CausalLMLoss:
    """Token-level next-token cross-entropy over labels that are not ``ignore_index``.

    The micro-batch is a mapping with ``input_ids``, ``labels`` and optionally
    ``attention_mask``; labels are shifted here, so position t predicts token t + 1.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index

    def count(self, batch: Mapping[str, Tensor]) -> int:
        return int((batch["labels"][:, 1:] != self.ignore_index).sum())

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        logits = out.logits if hasattr(out, "logits") else out
        return token_loss_sum(logits, batch["labels"], self.ignore_index)


def token_loss_sum(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Summed next-token cross-entropy of ``logits`` (B, T, V) against ``labels`` (B, T).

    The labels are shifted (not the logits), which avoids copying the logits tensor.
    """
    target = F.pad(labels[:, 1:], (0, 1), value=ignore_index).reshape(-1).to(logits.device)
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(flat, target, ignore_index=ignore_index, reduction="sum")


class SampleLoss:
    """Per-sample loss summed over the micro-batch; one item per sample.

    ``fn(output, target)`` must return the per-sample losses (reduction ``none``); the
    micro-batch is an ``(inputs, targets)`` pair.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        self.fn = fn or (lambda out, y: F.cross_entropy(out, y, reduction="none"))

    def count(self, batch: tuple[Tensor, Tensor]) -> int:
        return int(batch[0].shape[0])

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        per_sample = self.fn(model(inputs), targets)
        return per_sample.reshape(per_sample.shape[0], -1).sum(dim=1).sum()
