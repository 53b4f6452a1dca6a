"""``finetune --shard-dir``: the same training as in memory; faults are one line, exit 2."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from gradaccum.cli.main import main
from gradaccum.memory import shards

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


def test_shard_dir_needs_a_budget_and_lora(tmp_path, capsys):
    argv = ["finetune", "--out", str(tmp_path / "o"), *ARGS, "--shard-dir", str(tmp_path)]
    assert main(argv) == 2
    assert main([*argv, "--memory-budget", "1GB", "--method", "full"]) == 2
    err = capsys.readouterr().err
    assert "--shard-dir needs --memory-budget" in err and "supports --method lora" in err
