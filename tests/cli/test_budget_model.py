"""``finetune --shard-dir``: the same training as in memory; faults are one line, exit 2."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gradaccum.cli.main import main
from gradaccum.memory import sharded_adamw, shards
from tests.helpers import max_rel_err

ARGS = ["--model", "random:gemma3", "--max-steps", "2", "--global-batch", "4"]
ARGS += ["--micro-batch", "2", "--seq-len", "32", "--eval-samples", "2", "--save-every", "1"]
SHARDED = ["--memory-budget", "2GB", "--shard-dir"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADACCUM_CACHE", str(tmp_path / "cache"))


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def _error_lines(err: str) -> list[str]:
    """The error lines of stderr (tqdm draws its bar there too)."""
    return [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_sharded_finetune_trains_like_the_resident_one_and_survives_a_bad_shard(tmp_path, capsys):
    assert main(["finetune", "--out", str(tmp_path / "plain"), *ARGS]) == 0
    out, shard_dir = tmp_path / "sharded", tmp_path / "shards"
    assert main(["finetune", "--out", str(out), *ARGS, *SHARDED, str(shard_dir)]) == 0
    assert "memory plan for a 2048 MiB budget" in capsys.readouterr().out
    for a, b in zip(_losses(out), _losses(tmp_path / "plain"), strict=True):
        assert abs(a - b) <= 1e-5 * abs(b)

    shard = shard_dir / "model.layers.0.mlp.down_proj.weight.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    before = _digests(out / "checkpoints")
    argv = ["finetune", "--out", str(out), *ARGS, "--max-steps", "3", "--resume", "--force"]
    assert main([*argv, *SHARDED, str(shard_dir)]) == 2
    (err,) = _error_lines(capsys.readouterr().err)
    assert "shard model.layers.0.mlp.down_proj.weight" in err and "checksum" in err
    assert _digests(out / "checkpoints") == before  # the last good checkpoint is untouched


def test_a_full_disk_while_writing_shards_is_one_line(tmp_path, capsys, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards, "_pwrite_all", full)
    argv = ["finetune", "--out", str(tmp_path / "o"), *ARGS, *SHARDED, str(tmp_path / "s")]
    assert main(argv) == 2
    (err,) = _error_lines(capsys.readouterr().err)
    assert "the disk is full" in err


def test_a_truncated_gguf_is_one_line(tmp_path, capsys):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 20)
    argv = ["finetune", "--out", str(tmp_path / "o"), *ARGS, "--model", str(gguf)]
    assert main([*argv, *SHARDED, str(tmp_path / "s")]) == 2
    assert "not a valid GGUF file" in capsys.readouterr().err


def test_shard_dir_needs_a_budget_and_full_needs_global_clipping(tmp_path, capsys):
    argv = ["finetune", "--out", str(tmp_path / "o"), *ARGS, "--shard-dir", str(tmp_path)]
    assert main(argv) == 2
    full = [*argv, "--memory-budget", "1GB", "--method", "full"]
    assert main([*full, "--clip", "micro:1.0"]) == 2
    err = capsys.readouterr().err
    assert "--shard-dir needs --memory-budget" in err
    assert "--clip micro:1.0 needs gradients in memory" in err


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


FULL = ["--method", "full", "--clip", "global:0.5", "--max-steps", "3"]


def test_sharded_full_finetune_matches_the_resident_one(tmp_path, capsys):
    """Weights, gradients and moments on disk; same losses and weights as in memory."""
    assert main(["finetune", "--out", str(tmp_path / "plain"), *ARGS, *FULL]) == 0
    out, shard_dir = tmp_path / "sharded", tmp_path / "shards"
    assert main(["finetune", "--out", str(out), *ARGS, *FULL, *SHARDED, str(shard_dir)]) == 0
    for a, b in zip(_losses(out), _losses(tmp_path / "plain"), strict=True):
        assert abs(a - b) <= 1e-5 * abs(b)
    ours, ref = _weights(out / "model"), _weights(tmp_path / "plain" / "model")
    assert set(ours) <= set(ref) and len(ours) >= len(ref) - 1  # a tied head is saved once
    names = sorted(ours)
    assert max_rel_err([ours[n] for n in names], [ref[n] for n in names]) <= 1e-4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    weight_mb = sum(t.numel() for t in ours.values()) * 4 / 2**20
    for r in train:  # each step rewrites every weight and both moments on disk
        assert r["shard_written_mb"] >= 3 * weight_mb and r["shard_read_mb"] > weight_mb
    base = {p.name for p in shard_dir.rglob("*.safetensors")}
    assert not any(name.startswith("exp_avg") for name in base)  # the base shards are untouched


def test_sharded_full_finetune_resumes_exactly_after_a_crash_inside_the_step(tmp_path, monkeypatch):
    """A crash half-way through the optimizer's shard-by-shard step leaves some weights
    updated; the resume restores the shards of the last checkpoint and ends bit-identical."""
    calls = {"n": 0, "crash_at": None}
    real = sharded_adamw._update

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["crash_at"]:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(sharded_adamw, "_update", counting)
    argv = [*ARGS, *FULL, *SHARDED, str(tmp_path / "shards")]
    assert main(["finetune", "--out", str(tmp_path / "straight"), *argv]) == 0
    calls["crash_at"], calls["n"] = calls["n"] * 5 // 6, 0  # inside the third step
    crashed = ["finetune", "--out", str(tmp_path / "crashed"), *argv]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(crashed)
    calls["crash_at"] = None
    assert main([*crashed, "--resume"]) == 0
    assert _losses(tmp_path / "crashed")[-1] == _losses(tmp_path / "straight")[-1]
    ours, ref = _weights(tmp_path / "crashed" / "model"), _weights(tmp_path / "straight" / "model")
    assert sorted(ours) == sorted(ref)
    assert all(torch.equal(ours[n], ref[n]) for n in ours)


def test_bf16_lora_writes_bf16_shards_and_full_refuses_them(tmp_path, capsys):
    shard_dir = tmp_path / "shards"
    argv = ["finetune", *ARGS, *SHARDED, str(shard_dir)]
    assert main([*argv, "--out", str(tmp_path / "fp32"), "--shard-dir", str(tmp_path / "s32")]) == 0
    assert main([*argv, "--out", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    assert "weights on disk as bf16" in capsys.readouterr().out
    store = shards.ShardStore(shard_dir)
    assert store.info("model.layers.0.mlp.down_proj.weight").dtype == torch.bfloat16
    for a, b in zip(_losses(tmp_path / "bf16"), _losses(tmp_path / "fp32"), strict=True):
        assert abs(a - b) <= 0.02 * abs(b)
    full = [*argv, "--out", str(tmp_path / "full"), "--method", "full"]
    assert main(full) == 2
    (err,) = _error_lines(capsys.readouterr().err)
    assert "holds bf16 shards, but full fine-tuning trains fp32 weights" in err
