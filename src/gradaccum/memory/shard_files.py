"""A shard folder as files: snapshot it into a checkpoint, restore it, export the model.

Shards are never rewritten in place (``ShardWriter`` replaces a file with a new one), so a
checkpoint can hold a shard folder's current state as hard links: no copy, no memory. A
restore links the checkpoint's files back (each replaced atomically) and removes shards
the checkpoint did not have, so the folder is exactly what it was at the checkpoint.
``export_model`` writes a sharded model as a plain Hugging Face folder, one tensor at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from torch import Tensor
from transformers import PreTrainedModel

from gradaccum.checkpoint.durable import fsync_dir, link_or_copy, write_durably
from gradaccum.checkpoint.tensorfile import safetensors_chunks
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


class _ShardTensors(Mapping):
    """Parameter name -> tensor, read from the shards on each access (one at a time)."""

    def __init__(self, sharded: ShardedParameters, resident: dict[str, Tensor]) -> None:
        self.sharded, self.resident = sharded, resident
        self.names = sorted([*sharded.params, *resident])

    def __getitem__(self, name: str) -> Tensor:
        if name in self.resident:
            return self.resident[name]
        return self.sharded.load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def export_model(model: PreTrainedModel, sharded: ShardedParameters, folder: Path) -> Path:
    """Write ``model`` (weights in ``sharded``) as ``folder``/{config.json,model.safetensors}."""
    folder.mkdir(parents=True, exist_ok=True)
    resident = {
        n: p.detach()
        for n, p in model.named_parameters()
        if n not in sharded.params and not is_placeholder(p)
    }
    target = folder / "model.safetensors"
    temp = folder / ".model.safetensors.tmp"
    temp.unlink(missing_ok=True)
    write_durably(temp, safetensors_chunks(_ShardTensors(sharded, resident)))  # type: ignore[arg-type]
    os.replace(temp, target)
    model.config.save_pretrained(folder)
    return folder
