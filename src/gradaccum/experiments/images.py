"""Real grayscale images shipped with scikit-learn, for masked-reconstruction experiments.

Two sources, both in [0, 1]: the 8x8 handwritten digits of ``load_digits`` upsampled
(bilinear) to ``size`` x ``size``, and random ``size`` x ``size`` patches of the two
photographs of ``load_sample_images`` (grayscale, downscaled by ``zoom``). The held-out
split is fixed whatever the seed: a fifth of the digits, and patches from the bottom
quarter of each photograph (training patches come from the top three quarters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ImageSplit:
    """Training and held-out images, (N, 1, size, size) float32 in [0, 1]."""

    train: Tensor
    held_out: Tensor


def digits(size: int) -> Tensor:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def photographs(zoom: int) -> list[Tensor]:
    """The sample photographs as (1, H, W) grayscale, average-pooled by ``zoom``."""
    from sklearn.datasets import load_sample_images

    out = []
    for img in load_sample_images().images:
        rgb = torch.tensor(img, dtype=torch.float32) / 255.0
        gray = (rgb * torch.tensor(GRAY)).sum(-1)[None, None]
        out.append(F.avg_pool2d(gray, zoom)[0])
    return out


def patches(
    image: Tensor, rows: tuple[int, int], n: int, size: int, gen: torch.Generator
) -> Tensor:
    """``n`` random size x size patches whose rows lie in ``rows`` = (start, stop)."""
    top = torch.randint(rows[0], rows[1] - size + 1, (n,), generator=gen).tolist()
    left = torch.randint(0, image.shape[-1] - size + 1, (n,), generator=gen).tolist()
    return torch.stack(
        [image[:, t : t + size, s : s + size] for t, s in zip(top, left, strict=True)]
    )


def load_images(size: int = 16, zoom: int = 4, patches_per_image: int = 700) -> ImageSplit:
    """Digits and photograph patches, split as the module docstring says (fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    d = digits(size)
    order = torch.randperm(len(d), generator=gen)
    cut = len(d) // 5
    train, held = [d[order[cut:]]], [d[order[:cut]]]
    for photo in photographs(zoom):
        split = photo.shape[1] * 3 // 4
        train.append(patches(photo, (0, split), patches_per_image, size, gen))
        held.append(patches(photo, (split, photo.shape[1]), patches_per_image // 4, size, gen))
    return ImageSplit(torch.cat(train), torch.cat(held))


def random_mask(shape: tuple[int, ...], patch: int, ratio: float, gen: torch.Generator) -> Tensor:
    """1 where pixels are kept, 0 on a random ``ratio`` of the patch x patch squares."""
    b, _, h, w = shape
    grid = (torch.rand(b, 1, h // patch, w // patch, generator=gen) >= ratio).float()
    return grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
