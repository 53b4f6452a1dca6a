"""Bench: gradaccum against one big pass and against Accelerate's ``accumulate()``.

One process, one GPT-2-shaped model, one global batch of variable-length sequences
(right padding, label -100 on pads). The one-pass gradient of the mean token loss is the
reference. gradaccum's ``Accumulator.step`` must match it for every micro-batch count K;
Accelerate, used as its docs show (the model's own per-micro-batch mean loss, divided by
K), averages micro-batch means and so misweights tokens when micro-batches hold different
numbers of them. Every variant steps the same kind of optimizer; times are interleaved
medians and ratios are medians of per-round ratios (see ``bench.timing``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel

from gradaccum.bench.recorder import GradRecorder
from gradaccum.bench.timing import interleaved_timings, paired_ratio, peak_bytes
from gradaccum.data.collate import collate
from gradaccum.engine import Accumulator
from gradaccum.losses import CausalLMLoss
from gradaccum.plan import slice_batch

Step = Callable[[], None]
REPORTED_K = 4


@dataclass(frozen=True)
class BenchShape:
    """Model and batch sizes of one bench run."""

    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    sequences: int
    min_len: int
    max_len: int
    ks: tuple[int, ...]
    repeats: int


FULL = BenchShape(4, 256, 4, 8192, 32, 16, 128, (2, 4, 8), 7)
QUICK = BenchShape(2, 64, 2, 1024, 8, 8, 32, (2, 4, 8), 1)


class GPT2Sizes(Protocol):
    """What ``build_model`` reads of a bench's shape."""

    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int


def build_model(shape: GPT2Sizes, seed: int) -> GPT2LMHeadModel:
    """GPT-2 architecture at the bench's size, dropout off, seeded without touching global RNG."""
    config = GPT2Config(
        vocab_size=shape.vocab_size,
        n_layer=shape.n_layer,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=shape.vocab_size - 1,
        eos_token_id=shape.vocab_size - 1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # its class name does not say; this is the default it uses
    return model


def build_batch(shape: BenchShape, seed: int) -> dict[str, Tensor]:
    """Random sequences with lengths spread evenly over [min_len, max_len], shuffled."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(shape.min_len, shape.max_len, shape.sequences).round().long()
    lengths = lengths[torch.randperm(shape.sequences, generator=g)]
    samples = []
    for n in lengths.tolist():
        ids = torch.randint(0, shape.vocab_size - 1, (n,), generator=g).tolist()
        samples.append({"input_ids": ids, "labels": ids})
    return collate(samples, pad_id=shape.vocab_size - 1)


def _one_pass(model: torch.nn.Module, batch: dict[str, Tensor], opt: torch.optim.Optimizer) -> Step:
    loss_fn = CausalLMLoss()
    total = loss_fn.count(batch)

    def step() -> None:
        (loss_fn(model, batch) / total).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _gradaccum(
    model: torch.nn.Module, batch: dict[str, Tensor], opt: torch.optim.Optimizer, k: int
) -> Step:
    engine = Accumulator(model, opt, micro_batch_size=len(batch["input_ids"]) // k)
    loss_fn = CausalLMLoss()

    def step() -> None:
        engine.step(batch, loss_fn)

    return step


def _accelerate(
    accelerator: Any,
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    opt: torch.optim.Optimizer,
    k: int,
) -> Step:
    model, opt = accelerator.prepare(model, opt)
    size = len(batch["input_ids"]) // k
    micro = [slice_batch(batch, i * size, (i + 1) * size) for i in range(k)]

    def step() -> None:
        # Variants with different K interleave on one Accelerator: start each window afresh.
        accelerator.gradient_accumulation_steps = k
        accelerator.step = 0
        for mb in micro:
            with accelerator.accumulate(model):
                loss = model(**mb).loss
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad()

    return step


def _names(ks: tuple[int, ...]) -> list[str]:
    return ["one_pass"] + [f"{kind}_k{k}" for k in ks for kind in ("gradaccum", "accelerate")]


def _variants(
    accelerator: Any,
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    ks: tuple[int, ...],
    opts: Mapping[str, torch.optim.Optimizer],
) -> dict[str, Step]:
    steps = {"one_pass": _one_pass(model, batch, opts["one_pass"])}
    for k in ks:
        steps[f"gradaccum_k{k}"] = _gradaccum(model, batch, opts[f"gradaccum_k{k}"], k)
        steps[f"accelerate_k{k}"] = _accelerate(
            accelerator, model, batch, opts[f"accelerate_k{k}"], k
        )
    return steps


def rel_err(grads: list[Tensor], ref: list[Tensor]) -> float:
    """Norm of the difference over the norm of the reference, on concatenated gradients."""
    a = torch.cat([g.flatten() for g in grads]).double()
    b = torch.cat([g.flatten() for g in ref]).double()
    return float((a - b).norm() / b.norm())


def _reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; clear them so runs do not leak settings."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _fresh_accelerator(k: int) -> Any:
    from accelerate import Accelerator

    _reset_accelerate()
    return Accelerator(gradient_accumulation_steps=k, cpu=True)


def run(quick: bool = False, seed: int = 0) -> dict:
    """Gradient error and throughput of gradaccum and Accelerate against one pass."""
    shape = QUICK if quick else FULL
    if any(shape.sequences % k for k in shape.ks) or REPORTED_K not in shape.ks:
        raise ValueError("every K must divide the global batch, and K=4 must be measured")
    model = build_model(shape, seed)
    batch = build_batch(shape, seed)
    tokens = CausalLMLoss().count(batch)
    names = _names(shape.ks)
    accelerator = _fresh_accelerator(shape.ks[0])
    try:
        recorders = {name: GradRecorder(model.parameters()) for name in names}
        peaks = {}
        for name, step in _variants(accelerator, model, batch, shape.ks, recorders).items():
            model.zero_grad(set_to_none=True)
            peaks[name] = peak_bytes(step)
        ref = recorders["one_pass"].grads
        errs = {name: rel_err(rec.grads, ref) for name, rec in recorders.items()}
        del recorders
        adamw = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name in names}
        steps = _variants(accelerator, model, batch, shape.ks, adamw)
        timings = interleaved_timings(steps, repeats=shape.repeats)
    finally:
        _reset_accelerate()

    def variant(name: str) -> dict[str, float]:
        return {
            "max_rel_err": errs[name],
            "seconds": timings[name].median,
            "tokens_per_s": tokens / timings[name].median,
            "ratio_vs_one_pass": paired_ratio(timings["one_pass"], timings[name]),
            "peak_rss_mb": peaks[name] / 2**20,
        }

    per_k = []
    for k in shape.ks:
        ours, theirs = f"gradaccum_k{k}", f"accelerate_k{k}"
        per_k.append(
            {
                "k": k,
                "micro_batch_size": shape.sequences // k,
                "gradaccum": variant(ours),
                "accelerate": variant(theirs),
                "ratio_vs_accelerate": paired_ratio(timings[theirs], timings[ours]),
            }
        )
    at_k = next(d for d in per_k if d["k"] == REPORTED_K)
    return {
        "bench": "accumulation",
        "quick": quick,
        "seed": seed,
        "model": {
            "family": "gpt2",
            "n_layer": shape.n_layer,
            "n_embd": shape.n_embd,
            "n_head": shape.n_head,
            "vocab_size": shape.vocab_size,
            "params": sum(p.numel() for p in model.parameters()),
        },
        "global_batch": shape.sequences,
        "lengths": [shape.min_len, shape.max_len],
        "tokens": tokens,
        "padded_tokens": batch["input_ids"].numel(),
        "ks": list(shape.ks),
        "optimizer": "AdamW",
        "repeats": shape.repeats,
        "threads": torch.get_num_threads(),
        "one_pass": variant("one_pass"),
        "per_k": per_k,
        "max_rel_err": max(d["gradaccum"]["max_rel_err"] for d in per_k),
        "accelerate_max_rel_err": max(d["accelerate"]["max_rel_err"] for d in per_k),
        "throughput_ratio_vs_one_pass": at_k["gradaccum"]["ratio_vs_one_pass"],
        "throughput_ratio_vs_accelerate": at_k["ratio_vs_accelerate"],
    }


def format_table(result: dict) -> str:
    """The bench result as a plain-text table, one row per variant."""
    m = result["model"]
    head = (
        f"accumulation bench: GPT-2 {m['n_layer']} layers x {m['n_embd']} "
        f"({m['n_head']} heads, vocab {m['vocab_size']}, {m['params'] / 1e6:.1f}M params); "
        f"{result['global_batch']} sequences of {result['lengths'][0]}-{result['lengths'][1]} "
        f"tokens ({result['tokens']} loss tokens); {result['optimizer']}; "
        f"median of {result['repeats']} interleaved rounds, {result['threads']} threads"
    )
    cols = f"{'variant':<12}{'K':>3}{'micro':>7}{'tokens/s':>10}{'vs 1-pass':>11}"
    cols += f"{'ours/accel':>12}{'grad rel err':>14}{'peak MB':>9}"
    one = result["one_pass"]
    rows = [head, cols, _row("one pass", 1, result["global_batch"], one, None)]
    for d in result["per_k"]:
        k, mb = d["k"], d["micro_batch_size"]
        rows.append(_row("gradaccum", k, mb, d["gradaccum"], d["ratio_vs_accelerate"]))
        rows.append(_row("accelerate", k, mb, d["accelerate"], None))
    rows.append(
        f"max rel err: gradaccum {result['max_rel_err']:.1e}, "
        f"accelerate {result['accelerate_max_rel_err']:.1e}; at K={REPORTED_K}: "
        f"{result['throughput_ratio_vs_one_pass']:.3f}x one pass, "
        f"{result['throughput_ratio_vs_accelerate']:.3f}x accelerate"
    )
    return "\n".join(rows)


def _row(name: str, k: int, micro: int, v: dict[str, float], vs_acc: float | None) -> str:
    acc = f"{vs_acc:.3f}" if vs_acc is not None else "-"
    return (
        f"{name:<12}{k:>3}{micro:>7}{v['tokens_per_s']:>10.0f}{v['ratio_vs_one_pass']:>11.3f}"
        f"{acc:>12}{v['max_rel_err']:>14.1e}{v['peak_rss_mb']:>9.0f}"
    )
