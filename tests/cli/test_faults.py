"""Faults during a run: a full disk, an unwritable folder, a damaged checkpoint on --resume.

Each must end with exit code 2 and one clear line, leave the previous checkpoint intact,
and a later ``--resume`` must finish with the same bits as an undisturbed run.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from safetensors import SafetensorError

from gradaccum.bench.crash import RUN_FLAGS, write_corpus
from gradaccum.checkpoint import load_checkpoint, published_steps, step_dir
from gradaccum.cli import artifacts, finetune, run_state
from gradaccum.cli.main import main

WEIGHTS = "model/model.safetensors"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undisturbed 3-step run, and the argv that makes it given --out."""
    root = tmp_path_factory.mktemp("faults")
    corpus = write_corpus(root / "corpus.txt")

    def argv(out) -> list[str]:
        return [
            "finetune",
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--max-steps",
            "3",
            *RUN_FLAGS,
        ]

    assert main(argv(root / "ref")) == 0
    return root / "ref", argv


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "gradaccum: error: " in line]
    assert len(errors) == 1
    return errors[0].split("gradaccum: error: ", 1)[1]


def resume_matches(reference, out) -> None:
    ref, argv = reference
    assert main([*argv(out), "--resume"]) == 0
    assert (out / WEIGHTS).read_bytes() == (ref / WEIGHTS).read_bytes()


def fail_during_second_checkpoint(monkeypatch, name: str, err: int) -> None:
    """Make ``os.<name>`` raise ``err`` while the step-2 checkpoint is being written."""
    real_save, real = run_state.save_checkpoint, getattr(os, name)

    def refuse(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    def save(folder, step, *args, **kwargs):
        if step == 2:
            monkeypatch.setattr(os, name, refuse)
        try:
            return real_save(folder, step, *args, **kwargs)
        finally:
            monkeypatch.setattr(os, name, real)

    monkeypatch.setattr(run_state, "save_checkpoint", save)


@pytest.mark.parametrize(
    ("name", "err", "fix"),
    [
        ("write", errno.ENOSPC, "No space left on device; free space or choose another --out"),
        ("mkdir", errno.EACCES, "Permission denied; fix the folder's permissions"),
    ],
)
def test_checkpoint_write_fault_keeps_the_last_checkpoint(
    reference, tmp_path, monkeypatch, capsys, name, err, fix
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        fail_during_second_checkpoint(patch, name, err)
        assert main(reference[1](out)) == 2
    line = error_line(capsys)
    assert line.startswith(f"cannot write checkpoint to {out / 'checkpoints'}: {fix}")
    assert published_steps(out / "checkpoints") == [1]
    assert load_checkpoint(out / "checkpoints").step == 1
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]
    resume_matches(reference, out)


def test_full_disk_for_metrics_or_weights_is_one_line(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_write = artifacts.MetricsLog.write

    def write(self, record):
        if record.get("step") == 2 and record["kind"] == "train":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real_write(self, record)

    with monkeypatch.context() as patch:
        patch.setattr(artifacts.MetricsLog, "write", write)
        assert main(reference[1](out)) == 2
    assert error_line(capsys) == (
        f"cannot write {out / 'metrics.jsonl'}: No space left on device; "
        "free space or choose another --out"
    )
    assert published_steps(out / "checkpoints") == [1]

    def save_trainable(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left (os error 28)")

    with monkeypatch.context() as patch:
        patch.setattr(finetune, "save_trainable", save_trainable)
        assert main([*reference[1](out), "--resume"]) == 2
    assert "cannot write the model weights: No space left on device" in error_line(capsys)
    assert published_steps(out / "checkpoints") == [2, 3]
    resume_matches(reference, out)


def truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def flip_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("file", "damage", "problem"),
    [
        ("trainable.safetensors", truncate, "is truncated"),
        ("optimizer.safetensors", flip_bit, "is corrupt (sha256 mismatch)"),
        ("meta.json", flip_bit, "is corrupt (sha256 mismatch)"),
        ("manifest.json", truncate, "is unreadable"),
    ],
)
def test_damaged_checkpoint_is_named_on_resume(reference, tmp_path, capsys, file, damage, problem):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    damage(step_dir(out / "checkpoints", 3) / file)
    assert main([*reference[1](out), "--resume"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"checkpoint {step_dir(out / 'checkpoints', 3) / file} {problem}")
    assert line.endswith("delete that folder to fall back to the previous checkpoint")
    if file == "trainable.safetensors":  # following the advice resumes exactly
        shutil.rmtree(step_dir(out / "checkpoints", 3))
        resume_matches(reference, out)
