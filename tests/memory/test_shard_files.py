"""Shard folders as files: restore is exact, export is a loadable Hugging Face folder."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from gradaccum.memory import shard_files as shard_files_module
from gradaccum.memory.offload import ShardedParameters
from gradaccum.memory.shard_files import export_model, restore_shards, shard_files
from gradaccum.memory.shards import ShardStore
from gradaccum.models import build_random_model


def test_restore_makes_the_folder_exactly_the_snapshot(tmp_path):
    store = ShardStore(tmp_path / "work", resident_bytes=2**20)
    store.put("a", torch.ones(3, 2))
    store.put("dir/b", torch.zeros(4))
    snapshot = tmp_path / "snap"
    saved = {}
    for rel, path in shard_files(store).items():  # what a checkpoint does: links
        saved[rel] = snapshot / rel
        saved[rel].parent.mkdir(parents=True, exist_ok=True)
        saved[rel].hardlink_to(path)
    assert torch.equal(store.get("a"), torch.ones(3, 2))  # cached now
    store.put("a", torch.full((3, 2), 7.0))
    store.put("extra", torch.ones(1))
    restore_shards(store, saved)
    assert set(shard_files(store)) == {"a.safetensors", "dir/b.safetensors"}
    assert torch.equal(store.get("a"), torch.ones(3, 2))  # not the stale cache


def test_an_exported_sharded_model_loads_with_from_pretrained(tmp_path, monkeypatch):
    """Exported a few rows at a time, never a whole tensor (a 262k-row embedding would
    break the budget at the very end of a run)."""
    model, _ = build_random_model("gpt2", "tiny", seed=3)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    store = ShardStore(tmp_path / "s")
    sharded = ShardedParameters(model, store, trainable=True)
    monkeypatch.setattr(shard_files_module, "EXPORT_CHUNK_BYTES", 1024)
    sizes = []
    rows = store.rows

    def spy(name, start, stop):
        out = rows(name, start, stop)
        sizes.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(store, "rows", spy)
    monkeypatch.setattr(store, "get", lambda name: pytest.fail(f"whole tensor {name} read"))
    export_model(model, sharded, tmp_path / "out")
    assert max(sizes) <= 1024 and len(sizes) > 2 * len(sharded.params)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    got = dict(loaded.named_parameters())
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
