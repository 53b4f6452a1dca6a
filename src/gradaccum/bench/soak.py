"""Bench: thousands of micro-steps through the engine; memory and file handles must stay flat.

A tiny GPT-2 trains on a few fixed global batches, one sequence per micro-batch, with
micro-batch and global clipping on, saving (and every other time re-loading) a checkpoint
every ``SAVE_EVERY`` optimizer steps. Resident memory and open file descriptors are read
after a warm-up (first allocations, thread pools, the first checkpoints) and at the end; a
leak of even a few kilobytes per step shows as growth. Goal: under 2 % RSS, no new handles.
"""

from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import torch

from gradaccum.bench.accumulation import QUICK, build_batch, build_model
from gradaccum.bench.timing import one_thread
from gradaccum.checkpoint import flatten_optimizer_state, load_checkpoint, save_checkpoint
from gradaccum.engine import Accumulator
from gradaccum.losses import CausalLMLoss
from gradaccum.transforms import parse_clip

SHAPE = replace(QUICK, n_layer=1, n_embd=32, vocab_size=256, sequences=4, min_len=8, max_len=24)
SAVE_EVERY = 25  # optimizer steps between checkpoints
WARMUP = 0.2  # fraction of the run before the first reading


def _usage() -> tuple[int, int]:
    """Resident bytes and open file descriptors of this process, after a full collection."""
    gc.collect()
    process = psutil.Process()
    return process.memory_info().rss, process.num_fds()


def soak(micro_steps: int, seed: int, folder: Path) -> dict[str, Any]:
    """Run ``micro_steps`` micro-batches through the engine; report memory and fd growth."""
    model = build_model(SHAPE, seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine = Accumulator(
        model, optimizer, micro_batch_size=1, transforms=parse_clip("micro:1.0+global:1.0")
    )
    batches = [build_batch(SHAPE, seed + i) for i in range(8)]
    loss_fn = CausalLMLoss()
    steps = micro_steps // SHAPE.sequences
    warm_step = max(int(steps * WARMUP), 2 * SAVE_EVERY)
    done = saves = 0
    started = time.perf_counter()
    for step in range(1, steps + 1):
        done += engine.step(batches[step % len(batches)], loss_fn).micro_batches
        if step % SAVE_EVERY == 0:
            opt_tensors, opt_meta = flatten_optimizer_state(optimizer.state_dict())
            tensors = {"model": dict(model.state_dict()), "optimizer": opt_tensors}
            save_checkpoint(folder, step, tensors, {"optimizer": opt_meta})
            saves += 1
            if saves % 2 == 0:
                load_checkpoint(folder)
        if step == warm_step:
            rss_warm, fds_warm = _usage()
    rss_end, fds_end = _usage()
    return {
        "micro_steps": done,
        "optimizer_steps": steps,
        "checkpoints": saves,
        "warmup_micro_steps": warm_step * SHAPE.sequences,
        "rss_warm_mb": round(rss_warm / 2**20, 2),
        "rss_end_mb": round(rss_end / 2**20, 2),
        "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 3),
        "fd_warm": fds_warm,
        "fd_end": fds_end,
        "fd_growth": fds_end - fds_warm,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """``gradaccum bench soak``: 5,000 micro-steps, or 1,000 with --quick."""
    with one_thread(), tempfile.TemporaryDirectory(prefix="gradaccum-soak-") as tmp:
        return soak(1000 if quick else 5000, seed, Path(tmp))  # tiny tensors: one thread


def format_table(result: dict[str, Any]) -> str:
    """Before and after, in a few lines."""
    return "\n".join(
        [
            f"micro-steps      {result['micro_steps']} ({result['optimizer_steps']} optimizer "
            f"steps, {result['checkpoints']} checkpoints, warm-up "
            f"{result['warmup_micro_steps']})",
            f"resident memory  {result['rss_warm_mb']} MB -> {result['rss_end_mb']} MB "
            f"({result['rss_growth_pct']:+.2f} %)",
            f"open files       {result['fd_warm']} -> {result['fd_end']} "
            f"({result['fd_growth']:+d})",
            f"seconds          {result['seconds']}",
        ]
    )
