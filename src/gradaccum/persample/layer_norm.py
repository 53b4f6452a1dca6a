"""Layer normalization ``nn.LayerNorm``: ``y = x_hat * weight + bias`` over the last dims.

Per sample, the weight gradient is ``sum_t g_t * x_hat_t`` and the bias gradient
``sum_t g_t``: small enough (one row per sample) to hold explicitly.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from gradaccum.persample.registry import Explicit, PerSample, as_float, register


def affine_grads(
    module: nn.Module, x_hat: Tensor, g: Tensor, names: frozenset[str], bias: bool = True
) -> PerSample:
    """Per-sample gradients of an elementwise ``x_hat * weight (+ bias)`` over trailing dims."""
    weight = module.weight
    b, d = g.shape[0], math.prod(weight.shape)
    g = as_float(g).reshape(b, -1, d)
    grads = {}
    if "weight" in names:
        grads["weight"] = (g * x_hat.reshape(b, -1, d)).sum(1).view(b, *weight.shape)
    if bias and "bias" in names:
        grads["bias"] = g.sum(1).view(b, *weight.shape)
    return Explicit(grads)


@register(nn.LayerNorm)
def layer_norm(module: nn.Module, x: Tensor, g: Tensor, names: frozenset[str]) -> PerSample:
    assert isinstance(module, nn.LayerNorm)
    x_hat = F.layer_norm(as_float(x), module.normalized_shape, eps=module.eps)
    return affine_grads(module, x_hat, g, names)
