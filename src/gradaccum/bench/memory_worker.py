"""One memory-bench configuration, run alone in a fresh process (``python -m`` this module).

The argument is a JSON object: ``runner`` (``gradaccum`` or ``baseline``), ``folder`` (a
Hugging Face model folder), ``method`` (``lora`` or ``full``), ``seq_len``, ``steps``,
``global_batch``, ``precision``, ``seed``, ``shard_dir``, ``disk_dtype`` (of the shards
there, default ``fp32``) and ``budget`` (bytes, or ``"min"`` for the plan's smallest
feasible budget, ``"fast"`` for the smallest without the strict allocator mode). With
``precision`` bf16 and bf16 shards, matrices stay bf16 from disk to matmul (the plan
counts them at 2 bytes). It trains ``steps`` optimizer steps on
random token ids and prints one JSON line: the peak resident set of the whole process,
tokens per second after the first (warm-up) step, the losses, and for gradaccum the plan
and the shard I/O per step.

The baseline is plain transformers + peft as their docs show it: ``from_pretrained``, the
model's own loss from ``labels``, ``torch.optim.AdamW``, backward per micro-batch.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from gradaccum.memory.peak import lifetime_peak, release_free_memory

MiB = 2**20


def _batch(cfg: dict[str, Any], vocab: int) -> list[list[dict[str, list[int]]]]:
    import torch

    g = torch.Generator().manual_seed(cfg["seed"])
    high = min(vocab, 9000)
    shape = (cfg["steps"], cfg["global_batch"], cfg["seq_len"])
    ids = torch.randint(3, high, shape, generator=g).tolist()
    return [[{"input_ids": s, "labels": s} for s in step] for step in ids]


def _autocast(precision: str):  # noqa: ANN202
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def run_baseline(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from gradaccum.models.lora import apply_lora

    model = AutoModelForCausalLM.from_pretrained(cfg["folder"], dtype=torch.float32)
    torch.manual_seed(cfg["seed"])
    if cfg["method"] == "lora":
        model = apply_lora(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    losses, times = [], []
    for window in _batch(cfg, model.config.vocab_size):
        t0 = time.perf_counter()
        total = 0.0
        for sample in window:
            ids = torch.tensor([sample["input_ids"]])
            with _autocast(cfg["precision"]):
                loss = model(input_ids=ids, labels=ids).loss / len(window)
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(total)
    return {"losses": losses, "step_seconds": times}


def run_gradaccum(cfg: dict[str, Any]) -> dict[str, Any]:
    import functools

    import psutil
    import torch

    from gradaccum.data import collate, count_loss_tokens
    from gradaccum.engine import Accumulator
    from gradaccum.memory.budget_plan import ModelFacts, make_plan
    from gradaccum.memory.chunked_ce import ChunkedCausalLMLoss
    from gradaccum.memory.grad_spill import GradSpill
    from gradaccum.memory.sharded_adamw import ShardedAdamW
    from gradaccum.memory.sharded_model import load_sharded
    from gradaccum.memory.shards import ShardStore
    from gradaccum.models.lora import apply_lora

    full = cfg["method"] == "full"
    store = ShardStore(cfg["shard_dir"])
    model, sharded = load_sharded(cfg["folder"], store, trainable=full)
    torch.manual_seed(cfg["seed"])
    if not full:
        model = apply_lora(model)
    facts = ModelFacts.of(model, trainable_sharded=full)
    release_free_memory()
    baseline = psutil.Process().memory_info().rss
    budget = cfg["budget"]
    dtypes = {"disk_dtype": cfg.get("disk_dtype", "fp32"), "precision": cfg["precision"]}
    if budget in ("min", "fast"):
        smallest = make_plan(2**50, baseline, facts, cfg["seq_len"], **dtypes)
        budget = smallest.minimum if budget == "min" else smallest.fast_minimum
    plan = make_plan(budget, baseline, facts, cfg["seq_len"], **dtypes)
    plan.apply(model, store)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    spill = None
    if full:  # gradients accumulate in files next to the shards
        grads = dict(sharded.named_trainable())
        spill = GradSpill(f"{cfg['shard_dir']}-grads", grads, plan.grad_resident)
        optimizer = ShardedAdamW(params, sharded, lr=1e-4, weight_decay=0.0, spill=spill)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    engine = Accumulator(
        model,
        optimizer,
        micro_batch_size="auto",
        memory_budget=budget,
        collate=functools.partial(collate, pad_id=0),
        count_fn=count_loss_tokens,
        precision=cfg["precision"],
        offloaded=spill,
    )
    loss_fn = ChunkedCausalLMLoss()
    windows = _batch(cfg, facts.vocab)
    plan.micro_batch_size = engine.resolve_micro_batch_size(windows[0], loss_fn)
    losses, times, io = [], [], []
    for window in windows:
        read0, written0 = _io(store, spill)
        t0 = time.perf_counter()
        losses.append(engine.step(window, loss_fn).loss)
        times.append(time.perf_counter() - t0)
        read1, written1 = _io(store, spill)
        io.append({"read_mb": (read1 - read0) / MiB, "written_mb": (written1 - written0) / MiB})
    return {
        "losses": losses,
        "step_seconds": times,
        "plan": plan.describe(),
        "budget_mb": budget / MiB,
        "micro_batch_size": plan.micro_batch_size,
        "checkpointing": plan.checkpointing,
        "allocator": plan.allocator,
        "io_per_step": io,
    }


def _io(store: Any, spill: Any) -> tuple[int, int]:
    """Bytes read and written so far: shards (weights, moments) and gradient files."""
    read, written = store.bytes_read, store.bytes_written
    if spill is not None:
        read, written = read + spill.bytes_read, written + spill.bytes_written
    return read, written


def run_setup(cfg: dict[str, Any]) -> dict[str, Any]:
    """Not measured: the model folder (GGUF conversion or random weights) and its shards
    (in ``disk_dtype``, default fp32, in every folder of ``shard_dirs``)."""
    from pathlib import Path

    from gradaccum.memory.sharded_model import write_shards
    from gradaccum.memory.shards import DISK_DTYPES, ShardStore
    from gradaccum.models import convert_gguf, default_gemma_gguf, make_random_model_folder

    t0 = time.perf_counter()
    folder = Path(cfg["folder"])
    if cfg["model"] == "gemma3-270m":
        folder = convert_gguf(default_gemma_gguf())
    elif not (folder / "config.json").is_file():
        family, size = cfg["model"].removeprefix("random:"), "tiny"
        if family.endswith("-full"):
            family, size = family.removesuffix("-full"), "full"
        make_random_model_folder(family, folder, size=size, seed=0)
    convert_s = time.perf_counter() - t0
    for shard_dir in cfg["shard_dirs"]:
        store = ShardStore(shard_dir)
        if not any(store.names()):
            write_shards(folder, store, DISK_DTYPES[cfg.get("disk_dtype", "fp32")])
    return {"folder": str(folder), "convert_seconds": convert_s}


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    if cfg["runner"] == "setup":
        print(json.dumps(run_setup(cfg)))
        return 0
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(cfg.get("threads") or torch.get_num_threads())
    result = run_gradaccum(cfg) if cfg["runner"] == "gradaccum" else run_baseline(cfg)
    timed = result["step_seconds"][1:] or result["step_seconds"]
    tokens = cfg["global_batch"] * cfg["seq_len"]
    result.update(
        peak_mb=lifetime_peak() / MiB,
        tokens_per_s=tokens * len(timed) / sum(timed),
        seconds=time.perf_counter() - t0,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
