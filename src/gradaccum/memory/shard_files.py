"""A shard folder as files: snapshot it into a checkpoint, restore it, export the model.

Shards are never rewritten in place (``ShardWriter`` replaces a file with a new one), so a
checkpoint can hold a shard folder's current state as hard links: no copy, no memory. A
restore links the checkpoint's files back (each replaced atomically) and removes shards
the checkpoint did not have, so the folder is exactly what it was at the checkpoint.
``export_model`` writes a sharded model as a plain Hugging Face folder, streaming each
weight from its shard a row chunk at a time (never a whole 262k-row embedding).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel

from gradaccum.checkpoint.durable import fsync_dir, link_or_copy, write_durably
from gradaccum.checkpoint.tensorfile import safetensors_header
from gradaccum.memory.offload import ShardedParameters, is_placeholder
from gradaccum.memory.shards import ShardStore

SUFFIX = ".safetensors"


def shard_files(store: ShardStore) -> dict[str, Path]:
    """Every shard file of ``store`` by its path relative to the folder."""
    return {f"{name}{SUFFIX}": store.path(name) for name in store.names()}


def restore_shards(store: ShardStore, files: dict[str, Path]) -> None:
    """Make ``store``'s folder hold exactly ``files`` (relative name -> source file)."""
    if any(not rel.endswith(SUFFIX) for rel in files):
        raise ValueError("restore_shards takes shard files (*.safetensors) only")
    for rel, source in files.items():
        target = store.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.restore.tmp")
        temp.unlink(missing_ok=True)
        link_or_copy(source, temp)
        os.replace(temp, target)
    for rel in set(shard_files(store)) - set(files):
        (store.folder / rel).unlink()
    fsync_dir(store.folder)
    store.forget()


EXPORT_CHUNK_BYTES = 8 * 2**20  # rows of a shard in memory at a time while exporting


def _export_chunks(
    sharded: ShardedParameters, resident: dict[str, Tensor]
) -> Iterator[bytes | memoryview]:
    """A safetensors file of every weight, read from the shards a row chunk at a time."""
    dtype = sharded.store.compute_dtype
    entries = [(n, dtype, tuple(p.shape)) for n, p in sharded.params.items()]
    entries += [(n, t.dtype, tuple(t.shape)) for n, t in resident.items()]
    entries.sort()
    yield safetensors_header(entries)
    for name, _, shape in entries:
        if name in resident:
            yield _bytes(resident[name])
            continue
        rows = shape[0] if shape else 1
        row_bytes = max(1, torch.Size(shape[1:]).numel() * dtype.itemsize)
        step = max(1, EXPORT_CHUNK_BYTES // row_bytes)
        for start in range(0, rows, step):
            chunk = sharded.store.rows(name, start, min(rows, start + step)).to(dtype)
            yield _bytes(chunk)


def _bytes(t: Tensor) -> memoryview:
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def export_model(model: PreTrainedModel, sharded: ShardedParameters, folder: Path) -> Path:
    """Write ``model`` (weights in ``sharded``) as ``folder``/{config.json,model.safetensors},
    holding one row chunk of one weight in memory at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    resident = {
        n: p.detach()
        for n, p in model.named_parameters()
        if n not in sharded.params and not is_placeholder(p)
    }
    target = folder / "model.safetensors"
    temp = folder / ".model.safetensors.tmp"
    temp.unlink(missing_ok=True)
    write_durably(temp, _export_chunks(sharded, resident))
    os.replace(temp, target)
    model.config.save_pretrained(folder)
    return folder
