"""The PS-Clip experiment on a language model: LoRA fine-tuning on the default corpus.

One copy of the model holds the frozen weights; each method keeps its own LoRA weights and
its own optimizer (momentum), swapped into the model for its step and its evaluation, so
four methods cost one model's memory. Each seed draws its own LoRA initialization (peft's:
Kaiming-uniform A, zero B) and its own batches; held-out perplexity is over the first
``held_out`` samples of the held-out topics.

No tuning here (one step of Gemma 3 270M takes seconds on the CPU): every method takes the
same learning rate, and each clipping method the threshold factor its digits tuning chose.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradaccum.data import collate, default_corpus, make_samples
from gradaccum.evaluate import perplexity
from gradaccum.experiments.psclip_methods import (
    METHODS,
    Contestant,
    make_engine,
    race,
    reference_norms,
)
from gradaccum.losses import CausalLMLoss
from gradaccum.models import apply_lora, load_model


@dataclass(frozen=True)
class GemmaSetting:
    """Model, sizes and the learning rate of the language-model part."""

    spec: str
    seq_len: int
    micro_batch: int
    k: int
    steps: int
    eval_every: int
    held_out: int
    lr: float
    lora_r: int
    calibration_windows: int


@contextmanager
def swapped_in(params: list[Tensor], weights: list[Tensor]) -> Iterator[None]:
    """Put ``weights`` into ``params`` for the body, and keep what the body made of them."""
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            p.copy_(w)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                w.copy_(p)


def init_lora(model: nn.Module, seed: int) -> list[Tensor]:
    """peft's default LoRA initialization drawn from ``seed``; the trained weights' copies."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_A" in name:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            elif "lora_B" in name:
                p.zero_()
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def _contestant(
    model: nn.Module,
    params: list[Tensor],
    weights: list[Tensor],
    engine: Any,
    evaluate: Callable[[], float],
) -> Contestant:
    loss = CausalLMLoss()

    def step(batch: Any) -> Any:
        with swapped_in(params, weights):
            return engine.step(batch, loss)

    def score() -> float:
        with swapped_in(params, weights):
            return evaluate()

    return Contestant(step=step, evaluate=score)


def run_gemma(g: GemmaSetting, factors: dict[str, float | None], seeds: int) -> dict[str, Any]:
    """Every method for ``seeds`` seeds; held-out perplexity against training seconds."""
    loaded = load_model(g.spec)
    model = apply_lora(loaded.model, r=g.lora_r)
    model.train()
    tok = loaded.tokenizer
    train_docs, held_docs = default_corpus()
    train, _ = make_samples(train_docs, tok, g.seq_len)
    held, _ = make_samples(held_docs, tok, g.seq_len)
    held = held[: g.held_out]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batch_of = functools.partial(collate, pad_id=pad)
    params = [p for p in model.parameters() if p.requires_grad]

    def evaluate() -> float:
        return perplexity(model, held, batch_of, batch_size=g.micro_batch * g.k)

    runs = []
    for seed in range(seeds):
        start = init_lora(model, seed)
        gen = torch.Generator().manual_seed(seed)
        size = g.micro_batch * g.k
        idx = [
            torch.randint(0, len(train), (size,), generator=gen).tolist() for _ in range(g.steps)
        ]
        batches = [batch_of([train[i] for i in row]) for row in idx]
        norms = reference_norms(
            model, params, CausalLMLoss(), batches[: g.calibration_windows], g.micro_batch
        )
        contestants = {}
        for method in METHODS:
            f = factors[method]
            threshold = None if f is None else f * norms[method]
            engine = make_engine(model, params, method, g.lr, threshold, g.micro_batch)
            weights = [w.clone() for w in start]
            contestants[method] = _contestant(model, params, weights, engine, evaluate)
        result = race(contestants, batches, g.eval_every)
        result["reference_norms"] = norms
        runs.append(result)
    return {
        "source": loaded.source,
        "train_samples": len(train),
        "held_out_samples": len(held),
        "trained_params": sum(p.numel() for p in params),
        "runs": runs,
    }
