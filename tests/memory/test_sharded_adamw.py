"""ShardedAdamW: the weights torch.optim.AdamW gives, bit for bit, with state on disk."""

from __future__ import annotations

import torch

from gradaccum.losses import CausalLMLoss
from gradaccum.memory.offload import ShardedParameters
from gradaccum.memory.sharded_adamw import ShardedAdamW
from gradaccum.memory.shards import ShardStore
from gradaccum.models import build_random_model
from tests.helpers import make_lm_batch


def _train(model, optimizer, steps=3):
    for step in range(steps):
        batch = make_lm_batch([9, 6], vocab=512, seed=10 + step)
        optimizer.zero_grad(set_to_none=True)
        CausalLMLoss()(model, batch).backward()
        optimizer.step()


def test_same_weights_as_torch_adamw(tmp_path, monkeypatch):
    monkeypatch.setattr("gradaccum.memory.sharded_adamw.CHUNK_BYTES", 1000)  # many chunks
    ref, _ = build_random_model("gemma3", "tiny", seed=7)
    ref.train()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    _train(ref, opt)

    model, _ = build_random_model("gemma3", "tiny", seed=7)
    model.train()
    store = ShardStore(tmp_path, resident_bytes=50_000)
    sharded = ShardedParameters(model, store, trainable=True)
    sopt = ShardedAdamW(model.parameters(), sharded, lr=1e-2, weight_decay=0.1)
    _train(model, sopt)

    assert sopt.io["read_bytes"] > 0 and sopt.io["written_bytes"] > 0
    for name, p in ref.named_parameters():
        assert torch.equal(sharded.load(name), p.detach()), name
        assert torch.equal(store.get(f"exp_avg/{name}"), opt.state[p]["exp_avg"]), name
