"""RMS normalization: ``torch.nn.RMSNorm`` and the Hugging Face classes, matched by name.

All compute ``x_hat = x / sqrt(mean(x^2) + eps)`` and scale it by the weight: Qwen 2 and
Llama as ``weight * x_hat``, Gemma 3 as ``x_hat * (1 + weight)``. Either way sample b's
weight gradient is ``sum_t g_t * x_hat_t``; Qwen 2 and Llama round ``x_hat`` to the input
dtype first, and so do we.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradaccum.persample.layer_norm import affine_grads
from gradaccum.persample.registry import PerSample, register


def _normalize(x: Tensor, dims: int, eps: float) -> Tensor:
    x = x.float()
    axes = tuple(range(-dims, 0))
    return x * torch.rsqrt(x.pow(2).mean(axes, keepdim=True) + eps)


@register(nn.RMSNorm)
def rms_norm(module: nn.Module, x: Tensor, g: Tensor, names: frozenset[str]) -> PerSample:
    assert isinstance(module, nn.RMSNorm)
    eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
    x_hat = _normalize(x, len(module.normalized_shape), eps)
    return affine_grads(module, x_hat, g, names, bias=False)


@register("Gemma3RMSNorm")
def gemma_rms_norm(module: nn.Module, x: Tensor, g: Tensor, names: frozenset[str]) -> PerSample:
    return affine_grads(module, _normalize(x, 1, module.eps), g, names, bias=False)


@register("Qwen2RMSNorm", "LlamaRMSNorm")
def llama_rms_norm(module: nn.Module, x: Tensor, g: Tensor, names: frozenset[str]) -> PerSample:
    x_hat = _normalize(x, 1, module.variance_epsilon).to(x.dtype)
    return affine_grads(module, x_hat, g, names, bias=False)
