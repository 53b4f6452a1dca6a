"""Held-out perplexity of a causal LM, the same token loss the engine trains on."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from gradaccum.losses import CausalLMLoss


@torch.no_grad()
def perplexity(
    model: nn.Module,
    samples: Sequence[Any],
    collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
    batch_size: int = 8,
    autocast: Callable[[], Any] | None = None,
    loss_fn: Any = None,
) -> float:
    """exp(mean token loss) over ``samples``, evaluated in batches, in eval mode.

    ``loss_fn`` (default ``CausalLMLoss``) must return the summed token loss and count it.
    """
    loss_fn = loss_fn or CausalLMLoss()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(samples), batch_size):
            batch = collate(samples[start : start + batch_size])
            if autocast is not None:
                with autocast():
                    total += float(loss_fn(model, batch))
            else:
                total += float(loss_fn(model, batch))
            count += loss_fn.count(batch)
    finally:
        model.train(was_training)
    return math.exp(total / count) if count else math.nan
