"""Small models and references shared by the engine tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradaccum.losses import CausalLMLoss, token_loss_sum


class TinyCausalLM(nn.Module):
    """Embedding -> causal running mean -> MLP -> logits: cheap, causal, padding-aware."""

    def __init__(self, vocab: int = 37, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        x = self.emb(input_ids)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device).view(1, -1, 1)
        x = x.cumsum(dim=1) / steps
        return self.head(torch.tanh(self.mix(x)))


class Capture(torch.optim.SGD):
    """SGD that records the gradient it was asked to apply."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr=lr)
        self.seen: list[list[Tensor]] = []

    def step(self, closure=None):  # noqa: ANN001
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def make_lm_batch(lengths: list[int], vocab: int = 37, seed: int = 0, pad_to: int | None = None):
    """Right-padded batch of random sequences; pads carry label -100 (and mask 0)."""
    g = torch.Generator().manual_seed(seed)
    width = pad_to or max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full((len(lengths), width), -100, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        seq = torch.randint(1, vocab, (n,), generator=g)
        ids[i, :n], labels[i, :n], mask[i, :n] = seq, seq, 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def one_pass_grads(model: nn.Module, batch) -> tuple[list[Tensor], float]:
    """Reference: the mean token loss of the whole batch, one forward and backward."""
    model.zero_grad(set_to_none=True)
    loss_fn = CausalLMLoss()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits if hasattr(out, "logits") else out
    loss = token_loss_sum(logits, batch["labels"]) / loss_fn.count(batch)
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads, float(loss.detach())


def max_rel_err(a: list[Tensor], b: list[Tensor]) -> float:
    """Relative error of the concatenated gradient vectors."""
    va = torch.cat([x.flatten() for x in a]).double()
    vb = torch.cat([x.flatten() for x in b]).double()
    return float((va - vb).norm() / vb.norm())
