"""``gradaccum finetune``: causal-LM fine-tuning, read top to bottom like a recipe.

Data -> model (+ LoRA) -> samples -> optimizer, schedule, engine -> held-out perplexity
-> the training loop (one engine step per global batch, checkpoints) -> perplexity again
-> weights, metrics, loss curve. The engine does the accumulation and nothing is hidden.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from tqdm import tqdm

from gradaccum.cli.artifacts import MetricsLog, disk_errors, plot_loss_curve, write_json
from gradaccum.cli.budget_model import (
    check_clip_for_offloaded,
    load_into_shards,
    plan_budget,
    shard_io,
    sharded_optimizer,
)
from gradaccum.cli.config_file import defer_defaults, fill_settings, origin
from gradaccum.cli.run_state import Parts, find_resume_point, restore_run, save_run
from gradaccum.cli.units import parse_bytes
from gradaccum.data import (
    WindowSampler,
    collate,
    count_loss_tokens,
    default_corpus,
    make_samples,
    read_corpus,
    split_heldout,
)
from gradaccum.engine import Accumulator
from gradaccum.errors import UserError
from gradaccum.evaluate import perplexity
from gradaccum.losses import CausalLMLoss
from gradaccum.memory.peak import lifetime_peak
from gradaccum.memory.shard_files import export_model
from gradaccum.models import DEFAULT_SPEC, apply_lora, load_model, save_trainable
from gradaccum.precision import KINDS
from gradaccum.transforms import parse_clip

DEFAULT_LR = {"lora": 2e-3, "full": 5e-5}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a causal LM with exact accumulation")
    p.add_argument(
        "--model", default=DEFAULT_SPEC, help="gemma3-270m, random:FAMILY, folder, .gguf"
    )
    p.add_argument("--data", default=None, help=".txt, .jsonl or a folder (default: Python docs)")
    p.add_argument("--out", default=None, help="output folder (default: runs/finetune-TIME)")
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step")
    p.add_argument("--micro-batch", default="4", help="sequences per micro-batch, or 'auto'")
    p.add_argument("--memory-budget", default=None, help="e.g. 3GB; needed by --micro-batch auto")
    p.add_argument("--shard-dir", default=None, help="keep weights on disk here (needs a budget)")
    p.add_argument("--clip", default="global:1.0", help="none, global:C, micro:C, micro:C+global:C")
    p.add_argument("--max-steps", type=int, default=12, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="default 2e-3 (lora) / 5e-5 (full)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=2, help="linear warm-up steps")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--precision", choices=KINDS, default="fp32")
    p.add_argument("--nonfinite", choices=["skip_step", "drop_micro_batch"], default="skip_step")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    p.add_argument("--eval-samples", type=int, default=16, help="held-out sequences to score")
    p.add_argument("--save-every", type=int, default=5, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--force", action="store_true", help="resume even if settings changed")
    defer_defaults(p)
    p.set_defaults(run=run)


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings (flags over --config file over defaults), checked, for config.json."""
    fill_settings(args)
    micro = args.micro_batch
    if micro != "auto":
        try:
            micro = int(micro)
        except ValueError:
            raise UserError(
                f"{origin(args, '--micro-batch')} {micro!r}: give a positive integer or 'auto'"
            ) from None
    budget = parse_bytes(args.memory_budget) if args.memory_budget else None
    if micro == "auto" and budget is None:
        raise UserError("--micro-batch auto needs --memory-budget, e.g. --memory-budget 3GB")
    if args.shard_dir is not None:
        if budget is None:
            raise UserError("--shard-dir needs --memory-budget, e.g. --memory-budget 1GB")
        if args.method == "full":
            check_clip_for_offloaded(args.clip)
    checks = {
        "--global-batch": args.global_batch >= 1,
        "--micro-batch": micro == "auto" or micro >= 1,
        "--max-steps": args.max_steps >= 1,
        "--seed": 0 <= args.seed < 2**32,
        "--seq-len": args.seq_len >= 2,
        "--lr": args.lr is None or 0 < args.lr < math.inf,
        "--weight-decay": 0 <= args.weight_decay < math.inf,
        "--eval-samples": args.eval_samples >= 1,
        "--save-every": args.save_every >= 0,
        "--warmup": args.warmup >= 0,
        "--heldout-fraction": 0 < args.heldout_fraction < 1,
        "--lora-r": args.lora_r >= 1,
        "--lora-alpha": 0 < args.lora_alpha < math.inf,
    }
    for flag, ok in checks.items():
        if not ok:
            raise UserError(
                f"{origin(args, flag)} has an impossible value: see 'gradaccum finetune --help'"
            )
    parse_clip(args.clip)  # fail early on a bad spec
    if args.out is None:
        if args.resume:
            raise UserError("--resume needs --out naming the run folder to continue")
        args.out = time.strftime("runs/finetune-%Y%m%d-%H%M%S")
    return {
        "model": args.model,
        "data": str(Path(args.data).resolve()) if args.data else "pydoc_data.topics",
        "out": str(Path(args.out)),
        "method": args.method,
        "global_batch": args.global_batch,
        "micro_batch": micro,
        "memory_budget": budget,
        "shard_dir": args.shard_dir,
        "clip": args.clip,
        "max_steps": args.max_steps,
        "seed": args.seed,
        "lr": args.lr if args.lr is not None else DEFAULT_LR[args.method],
        "weight_decay": args.weight_decay,
        "warmup": args.warmup,
        "seq_len": args.seq_len,
        "precision": args.precision,
        "nonfinite": args.nonfinite,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "heldout_fraction": args.heldout_fraction,
        "eval_samples": args.eval_samples,
        "save_every": args.save_every,
    }


def load_documents(config: dict[str, Any]) -> tuple[list, list]:
    """Train and held-out documents: the Python reference by topic, or the user's files."""
    if config["data"] == "pydoc_data.topics":
        return default_corpus(heldout_fraction=config["heldout_fraction"], seed=config["seed"])
    docs, report = read_corpus(Path(config["data"]))
    print(f"data: {report.summary()}")
    return split_heldout(docs, config["heldout_fraction"], seed=config["seed"])


def warmup_then_linear(warmup: int, total: int):
    """LR multiplier: linear warm-up over ``warmup`` steps, then linear decay to 10%."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 1.0 - 0.9 * (step - warmup) / max(1, total - warmup)

    return factor


def check_out_folder(out: Path, resume: bool) -> None:
    """Refuse to write over a previous run unless it is being resumed."""
    if not resume and (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        raise UserError(
            f"{out} already holds a run: add --resume to continue it, or choose another --out"
        )


@disk_errors
def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    out = Path(config["out"])
    check_out_folder(out, args.resume)
    ckpt_dir = out / "checkpoints"
    ckpt = find_resume_point(ckpt_dir, config, args.force) if args.resume else None
    if args.resume and ckpt is None:
        print(f"no checkpoint in {ckpt_dir}: starting a new run")
    seed = config["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    # Data and model.
    train_docs, heldout_docs = load_documents(config)
    if config["shard_dir"]:  # weights stay on disk, read per layer (gradaccum.memory)
        full = config["method"] == "full"  # trains a working copy of the shards in OUT
        work = out / "shards" if full else None
        # bf16 LoRA: frozen weights stored in bf16 go to the matmul as they are
        disk = "bf16" if config["precision"] == "bf16" and not full else "fp32"
        loaded, sharded, disk = load_into_shards(config["model"], config["shard_dir"], work, disk)
    else:
        loaded = load_model(config["model"])
    tokenizer = loaded.tokenizer
    print(f"model: {loaded.source} ({loaded.family}, context {loaded.max_length})")
    seq_len = config["seq_len"]
    if seq_len > loaded.max_length:
        print(f"--seq-len {seq_len} exceeds the model's context: using {loaded.max_length}")
        seq_len = loaded.max_length
    model = loaded.model
    if config["method"] == "lora":
        model = apply_lora(model, r=config["lora_r"], alpha=config["lora_alpha"])
    loss_fn = CausalLMLoss()
    if config["shard_dir"]:  # print the memory plan; chunked loss, checkpointing if needed
        plan, loss_fn = plan_budget(
            model,
            sharded,
            config["memory_budget"],
            seq_len,
            precision=config["precision"],
            disk_dtype=disk,
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"trainable parameters: {sum(p.numel() for p in trainable):,} ({config['method']})")
    train, report = make_samples(train_docs, tokenizer, seq_len)
    heldout, _ = make_samples(heldout_docs, tokenizer, seq_len)
    heldout = heldout[: config["eval_samples"]]
    print(f"samples: {report.summary()}; held-out: {len(heldout)} sequences")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate_fn = functools.partial(collate, pad_id=pad_id)

    # Optimizer, schedule, engine, data order.
    spill = None
    if config["shard_dir"] and config["method"] == "full":
        optimizer, spill = sharded_optimizer(
            model, sharded, plan, out / "grad-spill", config["lr"], config["weight_decay"]
        )
    else:
        optimizer = torch.optim.AdamW(
            trainable, lr=config["lr"], weight_decay=config["weight_decay"]
        )
    schedule = warmup_then_linear(config["warmup"], config["max_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine = Accumulator(
        model,
        optimizer,
        scheduler=scheduler,
        micro_batch_size=config["micro_batch"],
        memory_budget=config["memory_budget"],
        collate=collate_fn,
        count_fn=count_loss_tokens,
        transforms=parse_clip(config["clip"]),
        precision=config["precision"],
        nonfinite=config["nonfinite"],
        offloaded=spill,
    )
    sampler = WindowSampler(len(train), config["global_batch"], seed=seed)
    shards = sharded.store if spill is not None else None
    parts = Parts(model, optimizer, scheduler, engine, sampler, shards)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=ckpt.step if ckpt else None)

    def evaluate(step: int) -> float:
        ppl = perplexity(
            model, heldout, collate_fn, batch_size=4, autocast=engine.autocast, loss_fn=loss_fn
        )
        metrics.write(
            {"kind": "eval", "step": step, "heldout_ppl": ppl, "heldout_loss": math.log(ppl)}
        )
        return ppl

    if ckpt is not None:
        restore_run(ckpt, parts)
        ppl_before = ckpt.meta["ppl_before"]
        print(f"resumed from step {ckpt.step}")
    else:
        ppl_before = evaluate(0)
    print(f"held-out perplexity before: {ppl_before:.3f}")

    # The training loop: one engine step per global batch.
    model.train()
    upcoming = [train[i] for i in sampler.window(sampler.epoch, sampler.position)]
    engine.resolve_micro_batch_size(upcoming, loss_fn)
    if config["micro_batch"] == "auto":
        print(f"micro-batch size {engine.micro_batch_size} fits the memory budget")
    started = time.perf_counter()
    tokens = 0
    bar = tqdm(total=config["max_steps"], initial=engine.steps, unit="step", dynamic_ncols=True)
    while engine.steps + engine.skipped_steps < config["max_steps"]:
        window = [train[i] for i in next(sampler)]
        t0 = time.perf_counter()
        io_before = shard_io(sharded, spill) if config["shard_dir"] else {}
        result = engine.step(window, loss_fn)
        io = shard_io(sharded, spill, since=io_before) if config["shard_dir"] else {}
        seconds = time.perf_counter() - t0
        window_tokens = sum(len(s["input_ids"]) for s in window)
        tokens += window_tokens
        rss_mb = psutil.Process().memory_info().rss / 2**20
        metrics.write(
            {
                "kind": "train",
                "step": engine.steps + engine.skipped_steps,
                "loss": result.loss,
                "grad_norm": result.grad_norm,
                "lr": result.lr,
                "items": result.items,
                "micro_batches": result.micro_batches,
                "micro_batch_size": result.micro_batch_size,
                "skipped": result.skipped,
                "tokens_per_s": window_tokens / seconds,
                "rss_mb": rss_mb,
                **io,
                **result.info,
            }
        )
        bar.update(1)
        bar.set_postfix(
            loss=f"{result.loss:.3f}", tok_s=f"{window_tokens / seconds:.0f}", mem=f"{rss_mb:.0f}MB"
        )
        done = engine.steps + engine.skipped_steps
        if config["save_every"] and done % config["save_every"] == 0:
            save_run(ckpt_dir, parts, config, {"ppl_before": ppl_before})
    bar.close()
    elapsed = time.perf_counter() - started

    # Evaluate, save, report.
    done = engine.steps + engine.skipped_steps
    ppl_after = evaluate(done)
    if not config["save_every"] or done % config["save_every"]:  # else the loop just saved it
        save_run(ckpt_dir, parts, config, {"ppl_before": ppl_before})
    if shards is not None:
        weights = export_model(model, sharded, out / "model")
    else:
        weights = save_trainable(
            model, out / ("adapter" if config["method"] == "lora" else "model")
        )
    if config["method"] == "full":
        tokenizer.save_pretrained(weights)
    plot_loss_curve(metrics.records(), out / "loss_curve.png")
    summary = {
        "heldout_ppl_before": ppl_before,
        "heldout_ppl_after": ppl_after,
        "steps": engine.steps,
        "skipped_steps": engine.skipped_steps,
        "micro_batch_size": engine.micro_batch_size,
        "oom_backoffs": engine.oom_backoffs,
        "train_seconds_this_session": elapsed,
        "tokens_this_session": tokens,
        "weights": str(weights),
        "peak_rss_mb": lifetime_peak() / 2**20,
        "memory_budget_mb": config["memory_budget"] / 2**20 if config["memory_budget"] else None,
    }
    write_json(out / "summary.json", summary)
    print(f"held-out perplexity after: {ppl_after:.3f} (before {ppl_before:.3f})")
    if config["memory_budget"]:
        print(
            f"peak memory of this process: {summary['peak_rss_mb']:.0f} MiB "
            f"(budget {summary['memory_budget_mb']:.0f} MiB)"
        )
    print(f"wrote {weights}, metrics.jsonl, loss_curve.png, config.json, summary.json to {out}")
    return 0
