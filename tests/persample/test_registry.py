"""Rule lookup: by type or class name, most specific first, never through a new forward."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradaccum.persample import Explicit, register, rule_for
from gradaccum.persample.embedding import embedding, scaled_embedding
from gradaccum.persample.linear import linear
from gradaccum.persample.registry import missing_rules


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


class SameLinear(nn.Linear):
    """Inherits nn.Linear's forward, so it inherits its rule."""


class OtherLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2


def test_lookup_is_most_specific_first():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextScaledWordEmbedding

    assert rule_for(nn.Linear(2, 2)) is linear
    assert rule_for(SameLinear(2, 2)) is linear
    assert rule_for(nn.Embedding(3, 2)) is embedding
    assert rule_for(Gemma3TextScaledWordEmbedding(3, 2, 0)) is scaled_embedding


def test_a_subclass_with_its_own_forward_has_no_rule():
    assert rule_for(OtherLinear(2, 2)) is None
    assert missing_rules([OtherLinear(2, 2), nn.Linear(2, 2), nn.PReLU()]) == [
        "OtherLinear",
        "PReLU",
    ]


def test_register_a_new_layer_kind():
    @register(Scaled)
    def scaled(module, x, g, names):
        return Explicit({"weight": (x * g).reshape(x.shape[0], -1, 3).sum(1)})

    assert rule_for(Scaled()) is scaled
