"""Embeddings: ``nn.Embedding``, Gemma's scaled embedding, and a table tied to an output head.

Sample b's gradient of the table has, in row v, the sum of its output gradients at the
positions whose id is v (times the scale of a scaled embedding; none at ``padding_idx``).
Its squared norm sums, per distinct (sample, id) pair, the squared norm of that row sum.
When the table is also an output head's weight, the per-sample gradient is the sum of
both contributions, so its squared norm needs the cross term ``2 <E_b, L_b>``: the head's
rows at the sample's own ids, dotted with the embedding's output gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradaccum.errors import UserError
from gradaccum.persample.registry import PerSample, as_float, register


class EmbeddingGrads(PerSample):
    """Per-sample gradients of a lookup table from ids (B, ...) and output grads (B, ..., D)."""

    def __init__(self, module: nn.Embedding, ids: Tensor, g: Tensor, scale: float = 1.0) -> None:
        if module.sparse or module.scale_grad_by_freq:
            raise UserError(
                f"per-sample clipping does not support {type(module).__name__} with "
                "sparse=True or scale_grad_by_freq=True"
            )
        b, d, v = g.shape[0], g.shape[-1], module.num_embeddings
        self.ids = ids.reshape(b, -1)
        g = as_float(g).reshape(b, -1, d)
        if module.padding_idx is not None:
            g = g.masked_fill((self.ids == module.padding_idx).unsqueeze(-1), 0.0)
        self.g = g * scale if scale != 1.0 else g
        self.shape = module.weight.shape
        keys = self.ids + v * torch.arange(b, device=ids.device).unsqueeze(1)
        uniq, inverse = torch.unique(keys, return_inverse=True)
        rows = self.g.new_zeros(len(uniq), d).index_add_(0, inverse.flatten(), self.g.flatten(0, 1))
        self.sq_norms = self.g.new_zeros(b).index_add_(0, uniq // v, rows.square().sum(1))

    def weighted(self, c: Tensor) -> dict[str, Tensor]:
        scaled = (self.g * c.to(self.g).view(-1, 1, 1)).flatten(0, 1)
        table = self.g.new_zeros(self.shape).index_add_(0, self.ids.flatten(), scaled)
        return {"weight": table}

    def cross(self, name: str, other: PerSample, other_name: str) -> Tensor | None:
        try:
            head_rows = other.rows(other_name, self.ids)
        except NotImplementedError:
            return None
        return (self.g * head_rows).sum((1, 2))


@register(nn.Embedding)
def embedding(module: nn.Module, ids: Tensor, g: Tensor, names: frozenset[str]) -> PerSample:
    assert isinstance(module, nn.Embedding)
    return EmbeddingGrads(module, ids, g)


@register("Gemma3TextScaledWordEmbedding")
def scaled_embedding(module: nn.Module, ids: Tensor, g: Tensor, names: frozenset[str]) -> PerSample:
    """Gemma 3's table, whose forward multiplies the looked-up rows by ``embed_scale``."""
    assert isinstance(module, nn.Embedding)
    scale = float(module.embed_scale.to(module.weight.dtype))
    return EmbeddingGrads(module, ids, g, scale)
