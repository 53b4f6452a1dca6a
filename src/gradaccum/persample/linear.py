"""Linear layers: ``nn.Linear`` (LoRA's lora_A/lora_B too) and GPT-2's ``Conv1D`` (weight in x out).

Sample b's weight gradient is ``sum_t g_t a_t^T`` over its positions t. Its squared norm
comes either from the explicit product (O(T d_in d_out), the cost of the ordinary weight
gradient, and kept for the weighted sum) or from the ghost-norm Gram form
``sum_{s,t} (a_s.a_t)(g_s.g_t)`` (O(T^2 (d_in + d_out)), keeping a and g for one weighted
matmul later). The explicit form is used when ``T (d_in + d_out) >= d_in d_out``: there it
is no slower and holds no more memory than a and g would.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradaccum.persample.registry import PerSample, as_float, register


class LinearGrads(PerSample):
    """Per-sample gradients of ``y = a W^T + b`` from a (B, K, T, d_in) and g (B, K, T, d_out).

    K independent weight blocks (convolution groups; 1 for a linear layer). ``shapes`` are
    the trained parameters' shapes; ``transpose`` means the weight is stored (d_in, d_out).
    """

    def __init__(
        self, a: Tensor, g: Tensor, shapes: dict[str, torch.Size], transpose: bool = False
    ) -> None:
        a, g = as_float(a), as_float(g)
        _, _, t, d_in = a.shape
        d_out = g.shape[-1]
        self.shapes, self.transpose = shapes, transpose
        self.per_w: Tensor | None = None
        self.per_b: Tensor | None = None
        self.a: Tensor | None = None
        self.g: Tensor | None = None
        self.sq_norms = g.new_zeros(g.shape[0])
        if "weight" in shapes and t * (d_in + d_out) >= d_in * d_out:
            self.per_w = g.mT @ a
            self.sq_norms += _sq(self.per_w)
        elif "weight" in shapes:
            self.a, self.g = a, g
            self.sq_norms += ((a @ a.mT) * (g @ g.mT)).sum((1, 2, 3))
        if "bias" in shapes:
            self.per_b = g.sum(2)
            self.sq_norms += _sq(self.per_b)

    def _weight(self, c: Tensor) -> Tensor:
        """``sum_b c_b grad_b`` of the weight as (K, d_out, d_in)."""
        if self.per_w is not None:
            return torch.tensordot(c, self.per_w, dims=1)
        a, g = self.a, self.g
        assert a is not None and g is not None
        w = c.view(-1, 1, 1, 1)
        if a.shape[-1] <= g.shape[-1]:
            a = a * w
        else:
            g = g * w
        if a.shape[1] == 1:
            return (g.reshape(-1, g.shape[-1]).T @ a.reshape(-1, a.shape[-1])).unsqueeze(0)
        return torch.einsum("bkto,bkti->koi", g, a)

    def weighted(self, c: Tensor) -> dict[str, Tensor]:
        c = c.to(self.sq_norms)
        out = {}
        if "weight" in self.shapes:
            w = self._weight(c)
            w = w[0].T.contiguous() if self.transpose else w
            out["weight"] = w.reshape(self.shapes["weight"])
        if self.per_b is not None:
            out["bias"] = torch.tensordot(c, self.per_b, dims=1).reshape(self.shapes["bias"])
        return out

    def rows(self, name: str, index: Tensor) -> Tensor:
        if name != "weight" or self.transpose or "weight" not in self.shapes:
            return super().rows(name, index)
        if self.per_w is not None:
            per = self.per_w[:, 0]
            return per.gather(1, index.unsqueeze(-1).expand(-1, -1, per.shape[-1]))
        assert self.a is not None and self.g is not None
        a, g = self.a[:, 0], self.g[:, 0]
        picked = g.gather(2, index.unsqueeze(1).expand(-1, g.shape[1], -1))
        return picked.mT @ a


def _sq(per_sample: Tensor) -> Tensor:
    """(B,) squared norms of per-sample tensors, without a squared copy of them."""
    return torch.linalg.vector_norm(per_sample.flatten(1), dim=1).square()


def trained_shapes(module: nn.Module, names: frozenset[str]) -> dict[str, torch.Size]:
    """Shapes of ``module``'s parameters that are being trained, by name."""
    return {n: p.shape for n, p in module.named_parameters(recurse=False) if n in names}


@register(nn.Linear)
def linear(module: nn.Module, x: Tensor, g: Tensor, names: frozenset[str]) -> PerSample:
    b = g.shape[0]
    a4 = x.reshape(b, 1, -1, x.shape[-1])
    return LinearGrads(a4, g.reshape(b, 1, -1, g.shape[-1]), trained_shapes(module, names))


@register("transformers.pytorch_utils.Conv1D")
def conv1d_transposed(module: nn.Module, x: Tensor, g: Tensor, names: frozenset[str]) -> PerSample:
    b = g.shape[0]
    a4 = x.reshape(b, 1, -1, x.shape[-1])
    g4 = g.reshape(b, 1, -1, g.shape[-1])
    return LinearGrads(a4, g4, trained_shapes(module, names), transpose=True)
