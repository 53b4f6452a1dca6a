"""Atomic, verifiable checkpoints: save, verify, load, find the newest, prune old ones.

Layout: `folder/step-00000012/{<group>.safetensors, meta.json, manifest.json, files/...}`. A
step folder only ever appears complete (written under `.tmp-...`, fsynced, then renamed), and
the manifest lists each file's sha256 and size so that a damaged copy is caught before it is
trusted. `files/` holds state that already lives in files (a sharded model's weights and
moments): hard-linked in (copied across file systems), which costs no space as long as
their owner replaces files rather than rewriting them in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradaccum.checkpoint.durable import (
    FileRecord,
    fsync_dir,
    hash_file,
    link_or_copy,
    write_durably,
    write_error,
)
from gradaccum.checkpoint.tensorfile import read_tensor_file, safetensors_chunks
from gradaccum.errors import UserError

FORMAT_VERSION = 1
MANIFEST, META, TMP_PREFIX, FILES = "manifest.json", "meta.json", ".tmp-", "files"
_STEP_DIR = re.compile(r"step-(\d{8,})")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class Checkpoint:
    """A verified checkpoint: its step, tensor groups ("model", "optimizer", ...) and meta."""

    step: int
    tensors: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    """Files saved with ``files=``: their relative names -> paths inside the checkpoint."""


def step_dir(folder: Path, step: int) -> Path:
    """The folder that holds the checkpoint for `step`."""
    return Path(folder) / f"step-{step:08d}"


def save_checkpoint(
    folder: Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any],
    keep_last: int = 2,
    files: dict[str, Path] | None = None,
) -> Path:
    """Write the checkpoint for `step` atomically, then prune to the newest `keep_last`.

    ``files`` (relative name -> existing file) are linked in under ``files/``; each must
    not change in place afterwards (replace it with a new file instead).

    Checkpoints of later steps are pruned too: they belong to a run this one resumed before.
    """
    folder = Path(folder)
    if keep_last < 1:
        raise UserError(f"--keep-last must be at least 1 (got {keep_last}): pass 1 or more")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    linked = files or {}
    for rel in linked:
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ValueError(f"checkpoint file name {rel!r} must be relative, without '..'")
    for group in tensors:
        if not _GROUP_NAME.fullmatch(group):
            raise ValueError(f"tensor group name {group!r} is not a safe file name")
    meta_bytes = json.dumps(meta, indent=1, sort_keys=True).encode()
    final = step_dir(folder, step)
    tmp = folder / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        if not folder.is_dir():
            folder.mkdir(parents=True)
            fsync_dir(folder.parent)
        _remove_leftovers(folder)
        tmp.mkdir()
        records = {
            f"{g}.safetensors": write_durably(tmp / f"{g}.safetensors", safetensors_chunks(t))
            for g, t in tensors.items()
        }
        for rel, source in sorted(linked.items()):
            records[f"{FILES}/{rel}"] = _link_in(Path(source), tmp / FILES / rel)
        records[META] = write_durably(tmp / META, [meta_bytes])
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "files": {name: asdict(rec) for name, rec in sorted(records.items())},
        }
        write_durably(tmp / MANIFEST, [json.dumps(manifest, indent=1).encode()])
        fsync_dir(tmp)
        _publish(tmp, final)
    except OSError as exc:
        raise UserError(write_error(f"checkpoint to {folder}", exc)) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(folder, step, keep_last)
    return final


def load_checkpoint(folder: Path, step: int | None = None) -> Checkpoint:
    """Verify every file of a checkpoint against its manifest, then load it.

    With `step=None` the newest complete step is loaded; damage raises rather than falling
    back silently, so a user never resumes from an older step without knowing.
    """
    folder = Path(folder)
    steps = _complete_steps(folder)
    if step is None:
        if not steps:
            raise UserError(f"no checkpoint in {folder}: start without --resume or fix the path")
        step = steps[-1]
    elif step not in steps:
        found = ", ".join(map(str, steps)) or "none"
        raise UserError(f"no complete checkpoint for step {step} in {folder} (found: {found})")
    path = step_dir(folder, step)
    files = _verify(path, fallback=any(s < step for s in steps))
    groups = {
        name.removesuffix(".safetensors"): read_tensor_file(path / name)
        for name in files
        if name.endswith(".safetensors") and "/" not in name
    }
    linked = {
        name.removeprefix(f"{FILES}/"): path / name
        for name in files
        if name.startswith(f"{FILES}/")
    }
    return Checkpoint(step, groups, json.loads((path / META).read_text()), linked)


def _link_in(source: Path, target: Path) -> FileRecord:
    """Hard-link (or copy) ``source`` to ``target``, make it durable, return its record."""
    target.parent.mkdir(parents=True, exist_ok=True)
    link_or_copy(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(target.parent)
    return hash_file(target)


def latest_checkpoint(folder: Path) -> int | None:
    """Return the newest step whose checkpoint fully verifies, or None; skips `.tmp-` folders."""
    for step in reversed(_complete_steps(Path(folder))):
        try:
            _verify(step_dir(folder, step), fallback=True)
        except UserError:
            continue
        return step
    return None


def published_steps(folder: Path) -> list[int]:
    """Steps with a published (renamed into place, manifest present) folder, oldest first.

    Unlike `latest_checkpoint` this does not verify: it tells "no checkpoint" from "damaged".
    """
    return _complete_steps(Path(folder))


def _all_steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    matches = (_STEP_DIR.fullmatch(p.name) for p in folder.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in matches if m)


def _complete_steps(folder: Path) -> list[int]:
    return [s for s in _all_steps(folder) if (step_dir(folder, s) / MANIFEST).is_file()]


def _verify(path: Path, fallback: bool) -> dict[str, Any]:
    fix = (
        "delete that folder to fall back to the previous checkpoint"
        if fallback
        else "delete that folder and start without --resume"
    )
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        version = manifest["format_version"]
        if META not in files:
            raise KeyError(META)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"checkpoint {path / MANIFEST} is unreadable ({exc}): {fix}") from exc
    if version != FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format version {version}, this gradaccum reads "
            f"{FORMAT_VERSION}: use a matching gradaccum version"
        )
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise UserError(f"checkpoint {file} is missing: {fix}")
        actual = hash_file(file)
        if actual.size != expected["size"]:
            what = "truncated" if actual.size < expected["size"] else "too long"
            raise UserError(
                f"checkpoint {file} is {what} ({actual.size} of {expected['size']} bytes): {fix}"
            )
        if actual != FileRecord(**expected):
            raise UserError(f"checkpoint {file} is corrupt (sha256 mismatch): {fix}")
    return files


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished temp folder into place; a same-step checkpoint is replaced."""
    old = None
    if final.exists():
        old = final.with_name(f"{TMP_PREFIX}replaced-{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.name.startswith(TMP_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _prune(folder: Path, step: int, keep_last: int) -> None:
    """Delete all but the newest `keep_last` steps up to `step`, and any step after it."""
    older = [s for s in _all_steps(folder) if s < step]
    doomed = older[: max(len(older) - (keep_last - 1), 0)]
    doomed += [s for s in _all_steps(folder) if s > step]
    for s in doomed:
        trash = folder / f"{TMP_PREFIX}pruned-{s:08d}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(step_dir(folder, s), trash)
        except OSError as exc:
            warnings.warn(
                f"could not prune old checkpoint {step_dir(folder, s)}: {exc}", stacklevel=3
            )
            continue
        shutil.rmtree(trash, ignore_errors=True)
