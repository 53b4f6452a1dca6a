"""A model built on the meta device over shards computes what from_pretrained's copy does."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from gradaccum.memory.offload import is_placeholder
from gradaccum.memory.sharded_model import load_sharded
from gradaccum.memory.shards import ShardStore
from gradaccum.models import make_random_model_folder


def test_sharded_model_gives_the_logits_of_the_folder(tmp_path):
    folder = make_random_model_folder("qwen2.5", tmp_path / "model", seed=1)
    store = ShardStore(tmp_path / "shards", resident_bytes=10_000)
    model, sharded = load_sharded(folder, store, trainable=False)
    assert all(is_placeholder(p) for p in model.parameters())
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still tied
    ids = torch.tensor([[5, 9, 100, 7, 300]])
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
    names = set(store.names())
    assert names == {n for n, _ in reference.named_parameters()}  # one shard per tensor
