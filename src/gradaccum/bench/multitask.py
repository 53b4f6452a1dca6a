"""Bench: the cost of one multi-task optimizer step, per combiner, against plain accumulation.

For a MobileNetV3-Small-like multi-head CNN and a GPT-2-shaped multi-token LM, with 2 and
4 tasks, one global batch is split into K micro-batches and stepped by: plain single-loss
accumulation (the sum of the task losses, one backward per micro-batch), gradaccum with
each combiner (classical combiners run one backward per task per micro-batch; stochastic
GCond gives each micro-batch one task), and torchjd's PCGrad (``mtl_backward`` per
micro-batch, ``jac_to_grad`` at the window's end). Every variant steps its own AdamW on
the same model; times are interleaved and ratios are medians of per-round ratios
(``bench.timing``), so a ratio of 1.1 means 10% slower than plain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradaccum.bench.multitask_tasks import Problem, cnn_problem, lm_problem
from gradaccum.bench.recorder import GradRecorder
from gradaccum.bench.timing import interleaved_timings, one_thread, paired_ratio
from gradaccum.engine import Accumulator
from gradaccum.multitask import make_combiner
from gradaccum.plan import slice_batch

Step = Callable[[], None]
VARIANTS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "plain": None,
    "linear": ("linear", {}),
    "pcgrad": ("pcgrad", {}),
    "cagrad": ("cagrad", {}),
    "gradnorm": ("gradnorm", {}),
    "gcond_classical": ("gcond", {"stochastic": False}),
    "gcond_stochastic": ("gcond", {"stochastic": True}),
    "torchjd_pcgrad": None,
}
"""Every timed variant; None marks the two that are not a gradaccum combiner."""
HEADLINE = ("gcond_stochastic", "gcond_classical", "pcgrad", "torchjd_pcgrad")


@dataclass(frozen=True)
class Shape:
    """Sizes of one bench run."""

    tasks: tuple[int, ...]
    k: int
    cnn_batch: int
    cnn_res: int
    cnn_width: float
    lm_batch: int
    seq_len: int
    n_layer: int
    n_embd: int
    vocab: int
    repeats: int
    warmup: int


FULL = Shape((2, 4), 4, 32, 32, 1.0, 16, 64, 2, 128, 2048, 11, 1)
QUICK = Shape((2, 4), 4, 8, 16, 0.25, 8, 12, 1, 32, 64, 1, 0)


def _engine(problem: Problem, k: int, name: str, opt: torch.optim.Optimizer) -> Step:
    micro = len(problem.batch[0]) // k
    spec = VARIANTS[name]
    if spec is None:  # plain: one summed loss, one backward per micro-batch
        loss = problem.loss
        engine = Accumulator(problem.model, opt, micro_batch_size=micro, count_fn=loss.plain_count)
        return lambda: engine.step(problem.batch, loss.plain)  # type: ignore[return-value]
    combiner = make_combiner(spec[0], **spec[1])
    engine = Accumulator(
        problem.model,
        opt,
        micro_batch_size=micro,
        combiner=combiner,
        shared_params=problem.last_shared,
    )
    return lambda: engine.step(problem.batch, problem.loss)  # type: ignore[return-value]


def _torchjd(problem: Problem, k: int, opt: torch.optim.Optimizer) -> Step:
    """torchjd's PCGrad under accumulation: Jacobians of the trunk summed over the window."""
    from torchjd.aggregation import PCGrad
    from torchjd.autojac import jac_to_grad, mtl_backward

    size = len(problem.batch[0]) // k
    micro = [slice_batch(problem.batch, i * size, (i + 1) * size) for i in range(k)]
    loss, model, n = problem.loss, problem.model, len(problem.heads)
    total = loss.plain_count(problem.batch)
    aggregator = PCGrad()

    def step() -> None:
        for mb in micro:
            h = model.features(mb[0])
            losses = [loss.head_loss(model, i, h, mb) / total for i in range(n)]
            mtl_backward(losses, h, tasks_params=problem.heads, shared_params=problem.shared)
        jac_to_grad(problem.shared, aggregator)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _steps(problem: Problem, k: int, make_opt: Callable[[], torch.optim.Optimizer]) -> dict:
    steps = {}
    for name in VARIANTS:
        opt = make_opt()
        steps[name] = (
            _torchjd(problem, k, opt)
            if name == "torchjd_pcgrad"
            else (_engine(problem, k, name, opt))
        )
    return steps


def rel_err(a: list[Tensor], b: list[Tensor]) -> float:
    """Norm of the difference over the norm of ``b``, on concatenated gradients."""
    x = torch.cat([g.flatten() for g in a]).double()
    y = torch.cat([g.flatten() for g in b]).double()
    return float((x - y).norm() / y.norm())


def _measure(problem: Problem, shape: Shape) -> dict[str, Any]:
    model = problem.model
    recorders = {n: GradRecorder(model.parameters()) for n in ("plain", "linear")}
    for name, rec in recorders.items():
        _engine(problem, shape.k, name, rec)()
    exact = rel_err(recorders["linear"].grads, recorders["plain"].grads)

    def adamw() -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=1e-5)

    timings = interleaved_timings(
        _steps(problem, shape.k, adamw), repeats=shape.repeats, warmup=shape.warmup
    )
    plain = timings["plain"]
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": {n: t.median for n, t in timings.items()},
        "vs_plain": {n: paired_ratio(t, plain) for n, t in timings.items()},
        "pcgrad_vs_torchjd": paired_ratio(timings["pcgrad"], timings["torchjd_pcgrad"]),
        "linear_grad_rel_err": exact,
    }


def run(quick: bool = False, seed: int = 0) -> dict:
    """Time per optimizer step of every variant, for both models and every task count.

    Runs on one thread: on a small shared machine a second OpenMP thread mostly waits
    for a core, which makes small kernels many times slower and the timings erratic.
    """
    with one_thread():
        return _run(QUICK if quick else FULL, quick, seed)


def _run(s: Shape, quick: bool, seed: int) -> dict:
    if any(s.k % n for n in s.tasks):
        raise ValueError("stochastic GCond needs K to be a multiple of every task count")
    configs = []
    for n in s.tasks:
        cnn = cnn_problem(n, s.cnn_batch, s.cnn_res, s.cnn_width, seed)
        configs.append({"model": "cnn", "tasks": n, **_measure(cnn, s)})
        lm = lm_problem(n, s.lm_batch, s.seq_len, s.n_layer, s.n_embd, s.vocab, seed)
        configs.append({"model": "lm", "tasks": n, **_measure(lm, s)})
    head = next(c for c in configs if c["model"] == "cnn" and c["tasks"] == 2)
    return {
        "bench": "multitask",
        "quick": quick,
        "seed": seed,
        "k": s.k,
        "cnn": {"batch": s.cnn_batch, "resolution": s.cnn_res, "width": s.cnn_width},
        "lm": {
            "batch": s.lm_batch,
            "seq_len": s.seq_len,
            "n_layer": s.n_layer,
            "n_embd": s.n_embd,
            "vocab": s.vocab,
        },
        "optimizer": "AdamW",
        "repeats": s.repeats,
        "threads": torch.get_num_threads(),
        "configs": configs,
        **{f"{name}_vs_plain": head["vs_plain"][name] for name in HEADLINE},
        "pcgrad_vs_torchjd": head["pcgrad_vs_torchjd"],
    }


def format_table(result: dict) -> str:
    """Seconds of plain accumulation, then every variant's time as a multiple of it."""
    cnn, lm = result["cnn"], result["lm"]
    lines = [
        f"multitask bench: time per optimizer step / plain accumulation, K={result['k']}, "
        f"{result['optimizer']}, median of {result['repeats']} interleaved rounds, "
        f"{result['threads']} threads",
        f"cnn: MobileNetV3-Small-like x{cnn['width']}, batch {cnn['batch']} of "
        f"{cnn['resolution']}x{cnn['resolution']}; lm: GPT-2 {lm['n_layer']} layers x "
        f"{lm['n_embd']}, vocab {lm['vocab']}, batch {lm['batch']} x {lm['seq_len']} tokens",
    ]
    cols = [f"{c['model']}/{c['tasks']} tasks" for c in result["configs"]]
    lines.append(f"{'variant':<18}" + "".join(f"{c:>14}" for c in cols))
    plain = "".join(f"{c['seconds']['plain']:>13.3f}s" for c in result["configs"])
    lines.append(f"{'plain (seconds)':<18}" + plain)
    for name in VARIANTS:
        if name != "plain":
            row = "".join(f"{c['vs_plain'][name]:>13.2f}x" for c in result["configs"])
            lines.append(f"{name:<18}" + row)
    lines.append(
        "ours/torchjd PCGrad: "
        + ", ".join(
            f"{c['model']}/{c['tasks']} {c['pcgrad_vs_torchjd']:.2f}x" for c in result["configs"]
        )
        + f"; linear vs plain gradient rel err <= "
        f"{max(c['linear_grad_rel_err'] for c in result['configs']):.1e}"
    )
    return "\n".join(lines)
