"""Differentiable SSIM (Wang et al. 2004) with a Gaussian window, per image.

Local means, variances and covariance come from a depthwise convolution with a normalized
Gaussian window (no padding, so only full windows count); SSIM is the mean of the map over
pixels and channels. ``ssim`` returns one value per image, so a loss can be summed over a
micro-batch as the engine's loss contract asks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

K1, K2 = 0.01, 0.03


def gaussian_window(
    size: int, sigma: float, channels: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """A (channels, 1, size, size) normalized 2-D Gaussian, for a depthwise conv."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    w = (w / w.sum()).to(dtype)
    return w.expand(channels, 1, size, size).contiguous()


def ssim(
    x: Tensor, y: Tensor, size: int = 7, sigma: float = 1.5, data_range: float = 1.0
) -> Tensor:
    """Mean SSIM of each image pair in (B, C, H, W) batches ``x`` and ``y``: shape (B,)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"need two (B, C, H, W) batches of one shape, got {x.shape}, {y.shape}")
    c = x.shape[1]
    w = gaussian_window(size, sigma, c, x.dtype).to(x.device)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    num = (2 * mx * my + c1) * (2 * cov + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    return (num / den).mean((1, 2, 3))
