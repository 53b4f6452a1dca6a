"""The embedding rule (padding row, Gemma's scale) and a table tied to the output head."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from transformers.models.gemma3.modeling_gemma3 import Gemma3TextScaledWordEmbedding

from gradaccum.errors import UserError
from gradaccum.persample import Collector
from tests.persample.oracle import check_rule, rel


def ids(b: int = 4, t: int = 9, vocab: int = 6) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_with_repeated_ids(padding_idx):
    torch.manual_seed(0)
    check_rule(nn.Embedding(6, 5, padding_idx=padding_idx), ids())


def test_gemma_scaled_embedding():
    torch.manual_seed(0)
    check_rule(Gemma3TextScaledWordEmbedding(6, 5, padding_idx=0, embed_scale=5**0.5), ids())


def test_scale_grad_by_freq_is_refused():
    with pytest.raises(UserError, match="scale_grad_by_freq"):
        check_rule(nn.Embedding(6, 5, scale_grad_by_freq=True), ids())


class Tied(nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 8, padding_idx: int | None = 0) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(x))))


@pytest.mark.parametrize("t", [3, 12])  # the head takes the ghost form, then the explicit one
def test_tied_table_norm_includes_the_cross_term(t):
    torch.manual_seed(0)
    model = Tied()
    x = ids(4, t, 11)
    target = torch.randn(4, t, 11)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, x_b, y_b):
        return (functional_call(model, p, (x_b[None],)) * y_b[None]).sum()

    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)
    want = sum(g.flatten(1).square().sum(1) for g in per.values())
    collector = Collector(model)
    collector.attach()
    try:
        (model(x) * target).sum().backward()
        got = collector.take().sq_norms()
    finally:
        collector.detach()
    assert rel(got, want) <= 1e-5
    assert all(p.requires_grad for p in model.parameters())
