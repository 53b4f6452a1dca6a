"""Activation checkpointing per transformer block: keep block inputs, recompute the rest.

A block's internal activations (attention scores, MLP intermediates) are dropped after
the forward pass and recomputed during backward, so activation memory grows with the
number of blocks times (tokens x hidden) instead of every intermediate of every block.
Non-reentrant checkpointing is used: it works with peft adapters and with parameters that
are brought in from shards by module hooks (the recompute runs the same hooks again).
"""

from __future__ import annotations

from torch import nn

from gradaccum.errors import UserError


def _transformers_model(model: nn.Module) -> nn.Module:
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise UserError(
            f"{type(lm).__name__} has no per-block activation checkpointing: "
            "turn checkpointing off for this model"
        )
    return lm


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Checkpoint every transformer block of a (possibly peft-wrapped) transformers model.

    Like transformers, it only takes effect in training mode.
    """
    _transformers_model(model).activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False}
    )


def disable_activation_checkpointing(model: nn.Module) -> None:
    """Keep every activation again."""
    _transformers_model(model).activation_checkpointing_disable()


def is_checkpointing(model: nn.Module) -> bool:
    """Whether per-block activation checkpointing is on."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(lm, "is_activation_checkpointing", False))
