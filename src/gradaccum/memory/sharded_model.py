"""A transformers model whose weights live in a shard folder, never all in memory at once.

``write_shards`` copies a Hugging Face folder's safetensors weights into a ShardStore one
row chunk at a time (plain reads: the page cache, not this process, holds the file), and
``load_sharded`` builds the model on the meta device (buffers real) and attaches the
shards. Loading Gemma 3 270M this way costs the imports plus a few megabytes, where
``from_pretrained`` holds all 1.07 GB of fp32 weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from gradaccum.errors import UserError
from gradaccum.memory.offload import ShardedParameters
from gradaccum.memory.shards import ShardStore

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
COPY_BYTES = 32 * 2**20  # rows read per chunk while copying a tensor


def write_shards(folder: str | Path, store: ShardStore, disk_dtype: torch.dtype) -> list[str]:
    """Copy every tensor of ``folder``'s ``*.safetensors`` files into ``store``; their names."""
    names = []
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise UserError(f"model folder {folder} has no *.safetensors weights")
    for path in files:
        with open(path, "rb", buffering=0) as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            for name, entry in header.items():
                if entry["dtype"] not in _DTYPES:
                    continue
                _copy_tensor(f, 8 + length, name, entry, store, disk_dtype)
                names.append(name)
    return names


def _copy_tensor(f, base: int, name: str, entry: dict, store: ShardStore, disk_dtype) -> None:  # noqa: ANN001
    dtype = _DTYPES[entry["dtype"]]
    shape = tuple(entry["shape"])
    start, _ = entry["data_offsets"]
    rows = shape[0] if shape else 1
    row_bytes = (torch.Size(shape[1:]).numel() if shape else 1) * dtype.itemsize
    step = max(1, COPY_BYTES // max(1, row_bytes))
    with store.writer(name, shape, disk_dtype) as writer:
        for row in range(0, rows, step):
            count = min(step, rows - row)
            buf = torch.empty(count * row_bytes, dtype=torch.uint8)
            f.seek(base + start + row * row_bytes)
            if f.readinto(memoryview(buf.numpy())) != len(buf):
                raise UserError(f"{f.name} is truncated: re-save the model folder")
            writer.write(buf.view(dtype).reshape(count, *shape[1:]))


def build_skeleton(folder: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The model of ``folder``'s config with parameters on the meta device, buffers real."""
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.tie_weights()
    return model.eval()


def load_sharded(
    folder: str | Path,
    store: ShardStore,
    *,
    trainable: bool,
    disk_dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, ShardedParameters]:
    """The model of ``folder`` with its weights in ``store`` (copied there if missing).

    ``trainable=False`` freezes every weight (for LoRA, applied afterwards).
    """
    model = build_skeleton(folder)
    missing = [n for n, _ in _unique_params(model) if not store.has(n)]
    if missing:
        write_shards(folder, store, disk_dtype)
    model.requires_grad_(trainable)
    return model, ShardedParameters(model, store, trainable=trainable, disk_dtype=disk_dtype)


def _unique_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out
