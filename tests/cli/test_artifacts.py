"""Run artifacts survive kills: the metrics log on resume, atomic JSON, disk errors."""

import errno
import json
import os

import pytest
from safetensors import SafetensorError

from gradaccum.cli.artifacts import MetricsLog, disk_errors, write_json
from gradaccum.errors import UserError


def lines(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_resume_keeps_what_the_checkpoint_covers_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    text = lines(
        {"kind": "eval", "step": 0, "heldout_ppl": 9.0},
        {"kind": "train", "step": 1, "loss": 2.0},
        {"kind": "train", "step": 2, "loss": 1.5},
        {"kind": "eval", "step": 2, "heldout_ppl": 5.0},  # rerun after resuming at step 2
        {"kind": "train", "step": 3, "loss": 1.0},  # past the checkpoint
    )
    path.write_text(text + '{"kind": "train", "st')  # a power cut mid-line
    log = MetricsLog(path, resume_step=2)
    assert [(r["kind"], r["step"]) for r in log.records()] == [
        ("eval", 0),
        ("train", 1),
        ("train", 2),
    ]
    log.write({"kind": "train", "step": 3, "loss": 1.0})
    assert [r["step"] for r in log.records()][-1] == 3


def test_a_new_run_starts_an_empty_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(lines({"kind": "train", "step": 1}))
    assert MetricsLog(path).records() == []


def test_write_json_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json(path, {"a": 1})

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/r/m.jsonl"), "cannot write /r/m.jsonl"),
        (OSError(errno.EACCES, "Permission denied"), "fix the folder's permissions"),
        (SafetensorError("I/O error: No space left on device (os error 28)"), "model weights"),
    ],
)
def test_disk_errors_become_one_line(error, expected):
    @disk_errors
    def command() -> int:
        raise error

    with pytest.raises(UserError, match=expected) as info:
        command()
    assert "\n" not in str(info.value) and "--out" in str(info.value)


def test_other_errors_pass_through():
    @disk_errors
    def command() -> int:
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        command()
