"""The two multi-task problems the multitask bench times: a multi-head CNN and a GPT-2 LM.

Each comes as a model, a synthetic global batch and a ``TaskLoss`` (per-task summed
losses and counts, see ``gradaccum.task_window``). ``plain`` is the single loss that plain
accumulation backpropagates: the sum of every task's summed loss, whose gradient over the
window is the sum of the task mean gradients, i.e. what the ``linear`` combiner returns.
``split`` exposes the shared features, the task heads and a per-task loss of the features,
which is what torchjd's ``mtl_backward`` needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GPT2Config, GPT2Model

from gradaccum.models.vision import MultiHeadCNN

Batch = tuple[Tensor, Tensor]
HeadLoss = Callable[[Tensor, Batch], Tensor]


def task_names(n: int) -> tuple[str, ...]:
    return tuple(f"task{i}" for i in range(n))


@dataclass
class Problem:
    """A model, one global batch, its task loss and the pieces torchjd needs."""

    model: nn.Module
    batch: Batch
    loss: HeadsLoss
    shared: list[nn.Parameter]
    """The shared trunk's parameters (torchjd's ``shared_params``)."""
    last_shared: list[nn.Parameter]
    """Parameters of the last shared layer (GradNorm's ``shared_params``)."""
    heads: list[list[nn.Parameter]]


class HeadsLoss:
    """Task i: the summed loss of head i on the shared features, over every sample."""

    def __init__(self, n: int, per_item: int = 1) -> None:
        self.tasks = task_names(n)
        self.per_item = per_item

    def count(self, mb: Batch) -> dict[str, int]:
        return dict.fromkeys(self.tasks, int(mb[0].shape[0]) * self.per_item)

    def __call__(self, model: nn.Module, mb: Batch, tasks: Sequence[str]) -> dict[str, Tensor]:
        h = model.features(mb[0])
        return {t: self.head_loss(model, self.tasks.index(t), h, mb) for t in tasks}

    def head_loss(self, model: nn.Module, i: int, h: Tensor, mb: Batch) -> Tensor:
        raise NotImplementedError

    def plain(self, model: nn.Module, mb: Batch) -> Tensor:
        """All tasks' summed losses added up: the single-loss baseline."""
        return sum(self(model, mb, self.tasks).values())  # type: ignore[return-value]

    def plain_count(self, mb: Batch) -> int:
        return self.count(mb)[self.tasks[0]]


class ClassifierLoss(HeadsLoss):
    """Cross-entropy of head i against label column i."""

    def head_loss(self, model: nn.Module, i: int, h: Tensor, mb: Batch) -> Tensor:
        return F.cross_entropy(model.heads[i](h), mb[1][:, i], reduction="sum")


class MultiTokenGPT2(nn.Module):
    """A GPT-2 trunk with one LM head per task; head i predicts the token i + 1 ahead."""

    def __init__(self, config: GPT2Config, tasks: int) -> None:
        super().__init__()
        self.trunk = GPT2Model(config)
        self.heads = nn.ModuleList(
            nn.Linear(config.n_embd, config.vocab_size, bias=False) for _ in range(tasks)
        )

    def features(self, ids: Tensor) -> Tensor:
        return self.trunk(input_ids=ids).last_hidden_state


class AheadLoss(HeadsLoss):
    """Task i: cross-entropy of head i at position t against token t + i + 1.

    Every task is scored on the same positions (those with all N targets in the sequence),
    so all tasks count the same tokens and ``plain`` is an exact single loss.
    """

    def __init__(self, n: int, seq_len: int) -> None:
        super().__init__(n, per_item=seq_len - n)
        self.n = n

    def head_loss(self, model: nn.Module, i: int, h: Tensor, mb: Batch) -> Tensor:
        ids = mb[0]
        positions = ids.shape[1] - self.n
        logits = model.heads[i](h[:, :positions])
        target = ids[:, i + 1 : i + 1 + positions]
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")


def cnn_problem(tasks: int, batch: int, res: int, width: float, seed: int) -> Problem:
    """MobileNetV3-Small-like encoder with ``tasks`` classifier heads, random images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MultiHeadCNN(tasks, width=width)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, res, res, generator=g)
    y = torch.randint(0, 10, (batch, tasks), generator=g)
    enc = model.encoder
    heads = [list(h.parameters()) for h in model.heads]
    return Problem(
        model, (x, y), ClassifierLoss(tasks), list(enc.parameters()), enc.last_layer, heads
    )


def lm_problem(
    tasks: int, batch: int, seq_len: int, n_layer: int, n_embd: int, vocab: int, seed: int
) -> Problem:
    """GPT-2-shaped trunk with ``tasks`` multi-token-prediction heads, random tokens."""
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=max(seq_len, 64),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=max(1, n_embd // 64),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab - 1,
        eos_token_id=vocab - 1,
        # Eager attention: torchjd vmaps the backward, which SDPA's CPU kernel cannot batch.
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MultiTokenGPT2(config, tasks)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=g)
    trunk = model.trunk
    heads = [list(h.parameters()) for h in model.heads]
    last = list(trunk.ln_f.parameters())
    return Problem(
        model, (ids, ids), AheadLoss(tasks, seq_len), list(trunk.parameters()), last, heads
    )
