"""Save and restore everything a fine-tuning run needs to continue exactly where it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradaccum.checkpoint import (
    capture_rng_state,
    flatten_optimizer_state,
    load_checkpoint,
    published_steps,
    restore_rng_state,
    save_checkpoint,
    unflatten_optimizer_state,
)
from gradaccum.engine import Accumulator
from gradaccum.errors import UserError
from gradaccum.memory.offload import is_placeholder
from gradaccum.memory.shard_files import restore_shards, shard_files
from gradaccum.memory.shards import ShardStore

# Settings that change what a run computes; changing one on --resume needs --force.
RESULT_KEYS = (
    "model",
    "data",
    "method",
    "global_batch",
    "seed",
    "lr",
    "weight_decay",
    "warmup",
    "seq_len",
    "precision",
    "clip",
    "max_steps",
    "lora_r",
    "lora_alpha",
    "heldout_fraction",
    "nonfinite",
)


@dataclass
class Parts:
    """The live objects whose state a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine: Accumulator
    sampler: Any
    shards: ShardStore | None = None  # full fine-tuning with weights and moments on disk


def save_run(folder: Path, parts: Parts, config: dict[str, Any], extra: dict[str, Any]) -> Path:
    """Checkpoint trainable weights, optimizer, scheduler, engine, data order and RNGs."""
    trainable = {
        n: p.detach()
        for n, p in parts.model.named_parameters()
        if p.requires_grad and not is_placeholder(p)  # sharded ones are in the shard files
    }
    opt_tensors, opt_meta = flatten_optimizer_state(parts.optimizer.state_dict())
    meta = {
        "config": config,
        "engine": parts.engine.state_dict(),
        "sampler": parts.sampler.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "optimizer": opt_meta,
        "rng": capture_rng_state(),
        **extra,
    }
    tensors = {"trainable": trainable, "optimizer": opt_tensors}
    windows = parts.engine.steps + parts.engine.skipped_steps  # skipped steps are done too
    files = shard_files(parts.shards) if parts.shards is not None else None
    return save_checkpoint(folder, windows, tensors, meta, files=files)


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Human-readable list of result-changing settings that differ."""
    return [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in RESULT_KEYS
        if saved.get(k) != now.get(k)
    ]


def find_resume_point(folder: Path, config: dict[str, Any], force: bool) -> Any | None:
    """The newest checkpoint, verified, after checking the configuration still matches.

    A damaged newest checkpoint is an error naming the file, never a silent fall-back.
    """
    if not published_steps(folder):
        return None
    ckpt = load_checkpoint(folder)
    diffs = config_differences(ckpt.meta["config"], config)
    if diffs and not force:
        raise UserError(
            f"--resume with a changed configuration would change the result ({'; '.join(diffs)}): "
            "rerun with the original settings, or add --force"
        )
    return ckpt


def restore_run(ckpt: Any, parts: Parts) -> None:
    """Put a checkpoint's state back into the live objects."""
    params = dict(parts.model.named_parameters())
    with torch.no_grad():
        for name, tensor in ckpt.tensors["trainable"].items():
            if name not in params:
                raise UserError(
                    f"checkpoint holds weight {name!r} that the model lacks: resume with the "
                    "same --model and --method, or start a new --out"
                )
            params[name].copy_(tensor)
    if parts.shards is not None:
        if not ckpt.files:
            raise UserError(
                f"checkpoint step {ckpt.step} has no shard files (saved by a run without "
                "--shard-dir): resume with the same --shard-dir setting, or start a new --out"
            )
        restore_shards(parts.shards, ckpt.files)
    opt_state = unflatten_optimizer_state(ckpt.tensors["optimizer"], ckpt.meta["optimizer"])
    parts.optimizer.load_state_dict(opt_state)
    parts.scheduler.load_state_dict(ckpt.meta["scheduler"])
    parts.engine.load_state_dict(ckpt.meta["engine"])
    parts.sampler.load_state_dict(ckpt.meta["sampler"])
    restore_rng_state(ckpt.meta["rng"])
