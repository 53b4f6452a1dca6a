"""Convolutions ``nn.Conv1d`` and ``nn.Conv2d``, as linear layers over unfolded patches.

Unfolding the (padded) input turns a convolution into a linear layer applied at every
output position, one weight block per group, so ``LinearGrads`` picks the explicit or the
ghost-norm form per layer exactly as for a linear layer on a sequence.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gradaccum.persample.linear import LinearGrads, trained_shapes
from gradaccum.persample.registry import PerSample, register


@register(nn.Conv1d, nn.Conv2d)
def conv(module: nn.Module, x: Tensor, g: Tensor, names: frozenset[str]) -> PerSample:
    assert isinstance(module, nn.Conv1d | nn.Conv2d)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if isinstance(module, nn.Conv1d):
        x, g = x.unsqueeze(-2), g.unsqueeze(-2)
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
    patches = F.unfold(x, kernel, dilation=dilation, stride=stride)
    b, k = g.shape[0], module.groups
    a4 = patches.reshape(b, k, -1, patches.shape[-1]).mT
    g4 = g.reshape(b, k, g.shape[1] // k, -1).mT
    return LinearGrads(a4, g4, trained_shapes(module, names))
