"""The shard store: exact round trips, checked reads, a resident budget, atomic writes."""

from __future__ import annotations

import errno

import pytest
import torch

from gradaccum.errors import UserError
from gradaccum.memory import shards
from gradaccum.memory.shards import ShardStore


@pytest.fixture
def weight() -> torch.Tensor:
    return torch.randn(3000, 40, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_rows_and_gather_in_every_disk_dtype(tmp_path, weight, dtype):
    ShardStore(tmp_path).put("w", weight, dtype)
    store = ShardStore(tmp_path)  # a fresh store: every block is checked on first read
    expected = weight.to(dtype).float()
    assert store.info("w").dtype == dtype and store.info("w").shape == (3000, 40)
    assert torch.equal(store.get("w"), expected)
    assert torch.equal(store.rows("w", 1234, 2345), expected[1234:2345])
    index = torch.tensor([0, 5, 1700, 2999])
    assert torch.equal(store.gather("w", index), expected[index])


def test_a_matmul_dtype_store_hands_out_matrices_stored_in_it_as_stored(tmp_path, weight):
    ShardStore(tmp_path).put("w16", weight, torch.bfloat16)
    ShardStore(tmp_path).put("w32", weight)
    ShardStore(tmp_path).put("norm", weight[0], torch.bfloat16)
    store = ShardStore(tmp_path, resident_bytes=10**7, matmul_dtype=torch.bfloat16)
    stored = weight.to(torch.bfloat16)
    assert torch.equal(store.get("w16"), stored) and store.get("w16").dtype == torch.bfloat16
    assert store.rows("w16", 5, 9).dtype == torch.bfloat16
    assert store.get("w32").dtype == torch.float32  # fp32 shards (trained weights) stay fp32
    assert store.get("norm").dtype == torch.float32  # vectors are not matmul operands
    index = torch.tensor([0, 5, 1700])
    for _ in range(2):  # from disk, then from the cache: embedding rows start fp32
        assert torch.equal(store.gather("w16", index), stored[index].float())


def test_a_row_range_reads_only_its_blocks(tmp_path, weight):
    ShardStore(tmp_path).put("w", weight)
    store = ShardStore(tmp_path)
    store.rows("w", 0, 10)
    assert store.bytes_read <= shards.BLOCK_BYTES
    store.gather("w", torch.tensor([2990]))
    assert store.bytes_read <= 2 * shards.BLOCK_BYTES


def test_the_cache_stays_under_its_budget_and_evicts_least_recently_used(tmp_path):
    store = ShardStore(tmp_path, resident_bytes=3 * 4000)
    for i in range(5):
        store.put(f"t{i}", torch.full((1000,), float(i)))
    store.get("t0")
    store.get("t1")
    store.get("t2")
    store.get("t0")  # t1 is now the least recently used
    store.get("t3")
    assert list(store._cache) == ["t2", "t0", "t3"]
    assert store.peak_resident <= store.resident_bytes
    store.resident_bytes = 100
    big = store.get("t4")  # larger than the budget: served, not kept
    assert big[0] == 4 and "t4" not in store._cache


def test_prefetch_loads_in_the_background(tmp_path, weight):
    store = ShardStore(tmp_path, resident_bytes=10**7)
    store.put("w", weight)
    store.evict_all()
    store.prefetch(["w"])
    store._pool.submit(lambda: None).result()  # the prefetch has run
    read = store.bytes_read
    assert read > 0 and torch.equal(store.get("w"), weight)
    assert store.bytes_read == read
    store.close()


def test_a_flipped_byte_is_caught_and_names_the_shard(tmp_path, weight):
    ShardStore(tmp_path).put("layer.w", weight)
    path = tmp_path / "layer.w.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"shard layer\.w .* corrupt \(checksum mismatch\)"):
        ShardStore(tmp_path).get("layer.w")


def test_truncated_and_missing_shards_are_one_clear_line(tmp_path, weight):
    ShardStore(tmp_path).put("w", weight)
    path = tmp_path / "w.safetensors"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(UserError, match=r"shard w .* corrupt \(truncated\)"):
        ShardStore(tmp_path).get("w")
    with pytest.raises(UserError, match=r"shard nope is missing"):
        ShardStore(tmp_path).get("nope")


@pytest.mark.parametrize(
    ("code", "why"), [(errno.ENOSPC, "disk is full"), (errno.EACCES, "not writable")]
)
def test_a_failed_write_is_one_line_and_keeps_the_old_shard(
    tmp_path, weight, monkeypatch, code, why
):
    store = ShardStore(tmp_path)
    store.put("w", weight)

    def fail(*args):
        raise OSError(code, "injected")

    monkeypatch.setattr(shards, "_pwrite_all", fail)
    with pytest.raises(UserError, match=f"cannot write shard w in .*{why}"):
        store.put("w", weight * 2)
    monkeypatch.undo()
    assert torch.equal(ShardStore(tmp_path).get("w"), weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp left
