"""What a multi-task combiner is: N task gradients in, the one gradient the optimizer sees out.

The engine keeps one gradient buffer per task over an accumulation window, normalizes each
like a single-task gradient, flattens them into the rows of ``TaskGrads.grads`` and, at the
window boundary, asks the combiner for the combined gradient. Combiners only see vectors:
they never touch the model, the data or the optimizer.

Most combiners work on the small N x N Gram matrix of the task gradients (computed once, in
fp64) and express their result as coefficients over the task rows, so the cost in P is one
Gram pass and one weighted sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

GRAM_CHUNK = 1 << 16
"""Columns per chunk when the Gram matrix is accumulated in fp64 (bounds the fp64 copy).

Small enough that each chunk's fp64 copy stays in cache and is not a fresh allocation the
kernel must fault in: at 1 << 20 columns the Gram pass of a 1M-parameter model was 9x slower.
"""


@dataclass
class TaskGrads:
    """Each task's accumulated gradient of one window, plus what combiners need to know."""

    names: list[str]
    """Task names, in a fixed order (ties are broken by this order)."""
    grads: Tensor
    """(N, P) fp32: row k is task k's accumulated, normalized gradient over all parameters."""
    losses: dict[str, float]
    """Each task's mean loss over the window."""
    shared: slice | None
    """Columns of ``grads`` holding the last shared layer's weights (GradNorm); None: all."""
    step: int
    """Optimizer steps taken so far."""

    def __post_init__(self) -> None:
        if self.grads.dim() != 2:
            raise ValueError(f"grads must be (N_tasks, P), got shape {tuple(self.grads.shape)}")
        if self.grads.shape[0] != len(self.names):
            raise ValueError(f"{len(self.names)} task names but {self.grads.shape[0]} grad rows")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"task names must be unique, got {self.names}")


class Combiner:
    """Turns a window's task gradients into the gradient the optimizer applies.

    ``stochastic``: the engine should give each micro-batch to a single task, chosen by
    ``schedule``. ``bn_eval``: the engine should keep BatchNorm layers in eval mode while
    it accumulates. ``state_dict`` is JSON-able (tensors as lists) for exact resume.
    """

    stochastic: bool = False
    bn_eval: bool = False

    def combine(self, tg: TaskGrads) -> tuple[Tensor, dict[str, float]]:
        """The combined (P,) gradient and numbers to log."""
        raise NotImplementedError

    def schedule(self, k: int, names: list[str]) -> list[str] | None:
        """The task of each of the ``k`` micro-batches of a window; None: every task runs."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; JSON-able."""
        return {}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def gram(grads: Tensor) -> Tensor:
    """``grads @ grads.T`` accumulated in fp64 over column chunks; returned on the CPU."""
    return cross(grads, grads)


def cross(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T`` for (N, P) and (M, P), accumulated in fp64 over column chunks, on the CPU."""
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[1], GRAM_CHUNK):
        cols = slice(start, start + GRAM_CHUNK)
        x = a[:, cols].double()
        out += x @ (x if b is a else b[:, cols].double()).T
    return out.cpu()


def mix_rows(coef: Tensor, grads: Tensor) -> Tensor:
    """``coef @ grads`` for (M, N) coefficients, computed in fp64 over column chunks.

    fp64 because a coefficient may be huge where its row is tiny (their product is not);
    the result has the dtype and device of ``grads``.
    """
    coef = coef.to(device=grads.device, dtype=torch.float64)
    out = torch.empty(coef.shape[0], grads.shape[1], dtype=grads.dtype, device=grads.device)
    for start in range(0, grads.shape[1], GRAM_CHUNK):
        cols = slice(start, start + GRAM_CHUNK)
        out[:, cols] = coef @ grads[:, cols].double()
    return out


def weighted_rows(coef: Tensor, grads: Tensor) -> Tensor:
    """``sum_k coef[k] * grads[k]`` as a (P,) tensor (see ``mix_rows``)."""
    return mix_rows(coef.reshape(1, -1), grads)[0]


def generator_state(gen: torch.Generator) -> list[int]:
    """A torch.Generator's state as a JSON-able list."""
    return gen.get_state().tolist()


def set_generator_state(gen: torch.Generator, state: list[int]) -> None:
    """Restore a state saved by ``generator_state``."""
    gen.set_state(torch.tensor(state, dtype=torch.uint8))
