"""Per-block activation checkpointing: identical gradients, far fewer saved activations."""

from __future__ import annotations

import pytest
import torch

from gradaccum.losses import CausalLMLoss
from gradaccum.memory.checkpointing import (
    disable_activation_checkpointing,
    enable_activation_checkpointing,
    is_checkpointing,
)
from gradaccum.models import apply_lora, build_random_model
from tests.helpers import make_lm_batch


def _grads_and_saved_bytes(model, batch):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = CausalLMLoss()(model, batch)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return grads, sum(saved)


@pytest.mark.parametrize("family", ["gpt2", "gemma3", "qwen2.5"])
@pytest.mark.parametrize("lora", [False, True])
def test_checkpointing_gives_identical_gradients(family, lora):
    model, _ = build_random_model(family, "tiny", seed=3)
    if lora:
        model = apply_lora(model)
    model.train()
    batch = make_lm_batch([40, 33], vocab=512, seed=4)
    plain, plain_saved = _grads_and_saved_bytes(model, batch)
    enable_activation_checkpointing(model)
    assert is_checkpointing(model)
    checked, checked_saved = _grads_and_saved_bytes(model, batch)
    disable_activation_checkpointing(model)
    assert not is_checkpointing(model)
    assert len(checked) == len(plain) > 0
    for a, b in zip(checked, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert checked_saved < 0.7 * plain_saved
