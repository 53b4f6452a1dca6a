"""Bench: per-sample clipping, gradaccum against Opacus, as ratios to a plain step.

Four variants of one optimizer step on one fixed batch, each on its own copy of the
same weights, in one process:

* ``plain``: the engine, no clipping (one micro-batch);
* ``gradaccum``: the engine with ``ClipPerSample(lam)``: per-sample norms and the
  clipped sum inside the one ordinary backward;
* ``opacus_hooks`` and ``opacus_ghost``: Opacus, no noise (``bench.persample_opacus``).
  A variant Opacus refuses (ghost clipping does not take GPT-2's tied embedding) is
  reported with Opacus's reason instead of numbers.

Cases: a GPT-2-shaped LM at each sequence length (all sequences full length, explicit
per-sample position ids, which Opacus needs) and an AlexNet-style CNN on 32x32 images.

Time: median over interleaved rounds of each variant's time over the plain step's in the
same round (``bench.timing``). Memory, in the same process: after an untimed warm-up
step, one more step of each variant alone under ``PeakMeter`` (the kernel's peak resident
set, reset just before), minus the resident set right before it. That is what the step
itself allocates (activations, gradients, per-sample buffers), independent of the other
variants' weights held by the process; ``peak_rss_mb`` is the absolute peak.

``max_rel_err`` checks gradaccum's clipped gradient against the brute-force loop over
single samples (``persample.clipped_reference``) on small instances of both models, with
padding and two micro-batches and ``lam`` at the median per-sample norm (so about half the
samples are clipped). ``rel_err_vs_gradaccum`` compares each Opacus variant's gradient
with gradaccum's on the bench case itself.
"""

from __future__ import annotations

import copy
import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradaccum.bench.accumulation import build_model, rel_err
from gradaccum.bench.persample_opacus import Forward, ghost_step, hooks_step
from gradaccum.bench.recorder import GradRecorder
from gradaccum.bench.timing import interleaved_timings, one_thread, paired_ratio
from gradaccum.engine import Accumulator
from gradaccum.losses import IGNORE_INDEX, CausalLMLoss, SampleLoss
from gradaccum.memory.peak import PeakMeter, release_free_memory
from gradaccum.models.alexnet import AlexNet
from gradaccum.persample import clipped_reference, sample_grads
from gradaccum.transforms import ClipPerSample
from gradaccum.transforms.base import total_norm

Step = Callable[[], None]
VARIANTS = ("plain", "gradaccum", "opacus_hooks", "opacus_ghost")
LAM = 1.0
"""Clipping threshold of the timed cases: at initialization it clips every sample."""


@dataclass(frozen=True)
class BenchShape:
    """Model and batch sizes of one bench run."""

    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    batch: int
    lengths: tuple[int, ...]
    cnn_batch: int
    cnn_width: float
    repeats: int


# GPT-2's own vocabulary (50257): the tied input/output embedding is the largest layer and
# the one per-sample methods find hardest (Opacus materializes it per sample, twice).
FULL = BenchShape(4, 256, 4, 50257, 16, (64, 256), 64, 0.5, 3)
QUICK = BenchShape(2, 32, 2, 256, 4, (16,), 4, 0.0625, 1)


@dataclass
class Case:
    """One model and batch on which every variant takes its step."""

    name: str
    model: nn.Module
    batch: Any
    forward: Forward
    batch_size: int


class _SumLoss:
    """The engine's form of a case's loss: summed cross-entropy over the targets not ignored."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward

    def count(self, batch: Any) -> int:
        target = batch[1] if isinstance(batch, tuple) else _lm_targets(batch["input_ids"])
        return int((target != IGNORE_INDEX).sum())

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        logits, target, _ = self.forward(model, batch)
        return F.cross_entropy(logits, target, reduction="sum")


def _lm_targets(ids: Tensor) -> Tensor:
    """Next-token targets, the last position ignored (labels shifted, logits not copied)."""
    return F.pad(ids[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)


def lm_forward(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, torch.Size]:
    """Flat logits and targets of full-length sequences, with per-sample position ids."""
    ids = batch["input_ids"]
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    logits = model(input_ids=ids, position_ids=positions).logits
    return logits.reshape(-1, logits.shape[-1]), _lm_targets(ids), logits.shape


def cnn_forward(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, None]:
    return model(batch[0]), batch[1], None


def cases(shape: BenchShape, seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    lm = build_model(shape, seed)  # GPT-2: tied input and output embedding
    out = []
    for t in shape.lengths:
        ids = torch.randint(0, shape.vocab_size, (shape.batch, t), generator=g)
        out.append(Case(f"gpt2 T={t}", lm, {"input_ids": ids}, lm_forward, shape.batch))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cnn = AlexNet(classes=10, width=shape.cnn_width)
    x = torch.randn(shape.cnn_batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (shape.cnn_batch,), generator=g)
    out.append(Case("alexnet", cnn, (x, y), cnn_forward, shape.cnn_batch))
    return out


def _engine_step(case: Case, model: nn.Module, opt: GradRecorder, clip: bool) -> Step:
    transforms = [ClipPerSample(LAM)] if clip else []
    engine = Accumulator(model, opt, micro_batch_size=case.batch_size, transforms=transforms)
    loss = _SumLoss(case.forward)

    def step() -> None:
        engine.step(case.batch, loss)

    return step


def variants(case: Case) -> tuple[dict[str, Step], dict[str, GradRecorder]]:
    """Each variant's step on its own copy of the case's model, and its recording optimizer."""
    steps, recorders = {}, {}
    for name in VARIANTS:
        model = copy.deepcopy(case.model)
        opt = recorders[name] = GradRecorder(model.parameters())
        if name in ("plain", "gradaccum"):
            steps[name] = _engine_step(case, model, opt, clip=name == "gradaccum")
        else:
            make = hooks_step if name == "opacus_hooks" else ghost_step
            steps[name] = make(model, opt, case.forward, case.batch, case.batch_size, LAM)
    return steps, recorders


def step_memory(step: Step) -> tuple[int, int]:
    """(bytes the step allocates above the resident set before it, absolute peak bytes)."""
    gc.collect()
    release_free_memory()
    before = psutil.Process().memory_info().rss
    with PeakMeter() as meter:
        step()
    return max(0, meter.peak - before), meter.peak


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def measure(case: Case, repeats: int) -> dict[str, Any]:
    """Warm-up, memory, gradients and interleaved timing of every variant on one case."""
    steps, recorders = variants(case)
    out: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        try:
            steps[name]()
        except Exception as exc:
            if not name.startswith("opacus"):
                raise
            out[name] = {"supported": False, "reason": _first_line(exc)}
            del steps[name]
            continue
        mem, peak = step_memory(steps[name])
        out[name] = {"supported": True, "step_mem_mb": mem / 2**20, "peak_rss_mb": peak / 2**20}
    ours = recorders["gradaccum"].grads
    timings = interleaved_timings(steps, repeats=repeats)
    for name in steps:
        v = out[name]
        v["seconds"] = timings[name].median
        v["time_ratio"] = paired_ratio(timings[name], timings["plain"])
        v["mem_ratio"] = v["step_mem_mb"] / out["plain"]["step_mem_mb"]
        v["peak_ratio"] = v["peak_rss_mb"] / out["plain"]["peak_rss_mb"]
        if name.startswith("opacus"):
            v["rel_err_vs_gradaccum"] = rel_err(recorders[name].grads, ours)
    params = sum(p.numel() for p in case.model.parameters())
    return {"name": case.name, "batch": case.batch_size, "params": params, "variants": out}


def _median_norm(model: nn.Module, samples: list[Any], loss_fn: Any) -> float:
    norms = [float(total_norm(g)) for g in sample_grads(model, samples, loss_fn)]
    return statistics.median(norms)


def _check(model: nn.Module, batch: Any, samples: list[Any], loss_fn: Any, micro: int) -> float:
    """Relative error of gradaccum's clipped gradient against the per-sample loop."""
    lam = _median_norm(model, samples, loss_fn)
    want = clipped_reference(model, samples, loss_fn, lam)
    opt = GradRecorder([p for p in model.parameters() if p.requires_grad])
    engine = Accumulator(model, opt, micro_batch_size=micro, transforms=[ClipPerSample(lam)])
    engine.step(batch, loss_fn)
    return rel_err(opt.grads, want)


def reference_errors(seed: int) -> dict[str, float]:
    """gradaccum against ``clipped_reference`` on a tiny GPT-2 (padded) and a tiny AlexNet."""
    g = torch.Generator().manual_seed(seed)
    lm = build_model(QUICK, seed)
    lengths = [5, 12, 3, 9, 7]
    width = max(lengths) + 2
    ids = torch.randint(0, QUICK.vocab_size, (len(lengths), width), generator=g)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        labels[i, :n], mask[i, :n] = ids[i, :n], 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    samples = [{k: v[i : i + 1, :n] for k, v in batch.items()} for i, n in enumerate(lengths)]
    errs = {"gpt2": _check(lm, batch, samples, CausalLMLoss(), micro=3)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cnn = AlexNet(classes=10, width=QUICK.cnn_width)
    x = torch.randn(6, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    cnn_samples = [(x[i : i + 1], y[i : i + 1]) for i in range(6)]
    errs["alexnet"] = _check(cnn, (x, y), cnn_samples, SampleLoss(), micro=4)
    return errs


def run(quick: bool = False, seed: int = 0) -> dict:
    """Time and memory of per-sample clipping (gradaccum, Opacus) against a plain step.

    One thread: on a small shared machine a second OpenMP thread mostly waits for a core
    (tiny layers then take tens of milliseconds in barriers).
    """
    shape = QUICK if quick else FULL
    with one_thread():
        results = [measure(case, shape.repeats) for case in cases(shape, seed)]
        errs = reference_errors(seed)
    longest = next(r for r in results if r["name"] == f"gpt2 T={max(shape.lengths)}")
    lm = longest["variants"]
    opacus_errs = [
        v["rel_err_vs_gradaccum"]
        for r in results
        for v in r["variants"].values()
        if "rel_err_vs_gradaccum" in v
    ]
    return {
        "bench": "persample",
        "quick": quick,
        "seed": seed,
        "lam": LAM,
        "model": {
            "family": "gpt2",
            "n_layer": shape.n_layer,
            "n_embd": shape.n_embd,
            "n_head": shape.n_head,
            "vocab_size": shape.vocab_size,
        },
        "lengths": list(shape.lengths),
        "cnn_width": shape.cnn_width,
        "repeats": shape.repeats,
        "threads": 1,
        "cases": results,
        "overhead_ratio": lm["gradaccum"]["time_ratio"],
        "opacus_overhead_ratio": lm["opacus_hooks"]["time_ratio"],
        "memory_ratio": lm["gradaccum"]["mem_ratio"],
        "opacus_memory_ratio": lm["opacus_hooks"]["mem_ratio"],
        "reference_errors": errs,
        "max_rel_err": max(errs.values()),
        "opacus_max_rel_err_vs_gradaccum": max(opacus_errs),
    }


def format_table(result: dict) -> str:
    """One row per case and variant: time and step-memory ratios to the plain step."""
    m = result["model"]
    lines = [
        f"per-sample clipping bench: GPT-2 {m['n_layer']} layers x {m['n_embd']} "
        f"({m['n_head']} heads, vocab {m['vocab_size']}) and AlexNet-style CNN "
        f"x{result['cnn_width']}; lam {result['lam']}; median of {result['repeats']} "
        f"interleaved rounds, {result['threads']} threads",
        f"{'case':<12}{'batch':>6}{'variant':>14}{'s/step':>9}{'time/plain':>12}"
        f"{'step MB':>9}{'mem/plain':>11}{'peak MB':>9}{'err vs ours':>13}",
    ]
    for r in result["cases"]:
        for name, v in r["variants"].items():
            head = f"{r['name']:<12}{r['batch']:>6}{name:>14}"
            if not v["supported"]:
                lines.append(f"{head}   not supported ({v['reason']})")
                continue
            err = v.get("rel_err_vs_gradaccum")
            lines.append(
                f"{head}{v['seconds']:>9.2f}{v['time_ratio']:>11.2f}x{v['step_mem_mb']:>9.0f}"
                f"{v['mem_ratio']:>10.2f}x{v['peak_rss_mb']:>9.0f}"
                f"{'-' if err is None else f'{err:.1e}':>13}"
            )
    lines.append(
        f"at T={max(result['lengths'])}: gradaccum {result['overhead_ratio']:.2f}x time, "
        f"{result['memory_ratio']:.2f}x step memory; Opacus hooks "
        f"{result['opacus_overhead_ratio']:.2f}x, {result['opacus_memory_ratio']:.2f}x; "
        f"max rel err vs the per-sample loop {result['max_rel_err']:.1e}"
    )
    return "\n".join(lines)
