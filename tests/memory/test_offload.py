"""Sharded parameters: exact gradients, and no weight kept resident once its module ran."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from gradaccum.losses import CausalLMLoss
from gradaccum.memory.checkpointing import enable_activation_checkpointing
from gradaccum.memory.offload import ShardedParameters, is_placeholder
from gradaccum.memory.shards import ShardStore
from gradaccum.models import apply_lora, build_random_model
from tests.helpers import make_lm_batch


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    CausalLMLoss()(model, batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("family", "lora", "ckpt"), [("gpt2", False, True), ("qwen2.5", True, False)]
)
def test_gradients_are_bit_identical_to_the_resident_model(tmp_path, family, lora, ckpt):
    batch = make_lm_batch([11, 6], vocab=512, seed=1)
    runs = []
    for shard in (False, True):
        model, _ = build_random_model(family, "tiny", seed=2)
        torch.manual_seed(3)
        model = apply_lora(model) if lora else model
        model.train()
        if ckpt:
            enable_activation_checkpointing(model)
        if shard:
            ShardedParameters(model, ShardStore(tmp_path, resident_bytes=0), trainable=not lora)
        runs.append(_grads(model, batch))
    assert runs[0].keys() == runs[1].keys() and runs[0]
    for name, grad in runs[0].items():
        assert torch.equal(runs[1][name], grad), name


def test_no_weight_stays_resident_after_its_module_ran(tmp_path, monkeypatch):
    model, _ = build_random_model("gemma3", "tiny", seed=2)
    model = apply_lora(model)
    store = ShardStore(tmp_path, resident_bytes=0)  # nothing cached
    sharded = ShardedParameters(model, store)
    assert all(is_placeholder(p) for p in sharded.params.values())
    loaded = []
    load = store._load

    def spy(name):
        tensor = load(name)
        loaded.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(store, "_load", spy)
    loss = CausalLMLoss()(model, make_lm_batch([9, 9], vocab=512, seed=4))
    gc.collect()
    assert loaded and all(ref() is None for ref in loaded)  # the graph holds keys, not weights
    before = store.bytes_read
    loss.backward()
    assert store.bytes_read > before  # backward read the saved weights back from disk
