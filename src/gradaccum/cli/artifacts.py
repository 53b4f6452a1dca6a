"""What a run writes besides checkpoints: metrics as JSON lines and a loss-curve PNG."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from gradaccum.checkpoint.durable import DISK_FIXES, write_error
from gradaccum.errors import UserError


class MetricsLog:
    """Append-only JSON-lines log that survives kills and resumes.

    On resume it keeps what the checkpoint covers: train lines up to its step, evaluations
    before it (one at its step is rerun) and never a line a kill or power cut left torn.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        kept: list[str] = []
        if resume_step is not None and path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    step, kind = record["step"], record["kind"]
                except (ValueError, KeyError, TypeError):
                    continue
                if step < resume_step or (step == resume_step and kind == "train"):
                    kept.append(line)
        write_atomically(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def plot_loss_curve(records: list[dict[str, Any]], path: Path) -> None:
    """Training loss per step, with held-out evaluations marked, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train" and not r.get("skipped")]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        ax.plot(
            [r["step"] for r in evals],
            [r["heldout_loss"] for r in evals],
            "o",
            label="held-out loss",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically."""
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` all at once (temp file, fsync, rename): a kill leaves the
    old content or the new, never a mix or an empty file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def disk_errors(func: Callable[..., int]) -> Callable[..., int]:
    """Make a full or unwritable disk, wherever a run writes, one UserError line.

    Only errors a user can fix (space, permissions, read-only) are translated; the Rust
    writer behind ``save_pretrained`` reports them as ``SafetensorError`` with an OS code.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return func(*args, **kwargs)
        except OSError as exc:
            if exc.errno not in DISK_FIXES:
                raise
            raise UserError(write_error(str(exc.filename or "the run's files"), exc)) from exc
        except SafetensorError as exc:
            code = re.search(r"os error (\d+)", str(exc))
            if code is None or int(code.group(1)) not in DISK_FIXES:
                raise
            oserror = OSError(int(code.group(1)), os.strerror(int(code.group(1))))
            raise UserError(write_error("the model weights", oserror)) from exc

    return wrapper
