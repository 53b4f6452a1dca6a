"""A MobileNetV3-Small-like CNN, written out by hand (no torchvision).

Inverted residual blocks (1x1 expand, depthwise kxk, squeeze-excite, 1x1 project) with
hardswish or ReLU and BatchNorm, in the block layout of Howard et al. 2019, Table 2.
``width`` scales every channel count (rounded to a multiple of 8); ``stem_stride=1``
keeps small inputs (32x32) from shrinking to nothing. The encoder returns the last
feature map; ``MultiHeadCNN`` and ``MaskedAutoencoder`` put task heads or a decoder on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Block:
    """One inverted residual block: kernel, expanded and output channels, SE, act, stride."""

    kernel: int
    expand: int
    out: int
    se: bool
    hardswish: bool
    stride: int


SMALL_BLOCKS = (
    Block(3, 16, 16, True, False, 2),
    Block(3, 72, 24, False, False, 2),
    Block(3, 88, 24, False, False, 1),
    Block(5, 96, 40, True, True, 2),
    Block(5, 240, 40, True, True, 1),
    Block(5, 240, 40, True, True, 1),
    Block(5, 120, 48, True, True, 1),
    Block(5, 144, 48, True, True, 1),
    Block(5, 288, 96, True, True, 2),
    Block(5, 576, 96, True, True, 1),
    Block(5, 576, 96, True, True, 1),
)
"""MobileNetV3-Small's bneck layers (Table 2 of the paper)."""


def divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``v``."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm, 'same' padding."""
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class SqueezeExcite(nn.Module):
    """Channel gates from the pooled map: 1x1 reduce, ReLU, 1x1 expand, hard sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = divisible(channels / 4)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(torch.relu(self.reduce(s)))
        return x * nn.functional.hardsigmoid(s)


class InvertedResidual(nn.Module):
    """1x1 expand, depthwise kxk, optional SE, 1x1 project; residual when shapes match."""

    def __init__(self, cin: int, block: Block, width: float) -> None:
        super().__init__()
        mid, cout = divisible(block.expand * width), divisible(block.out * width)
        act: type[nn.Module] = nn.Hardswish if block.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if mid != cin:
            layers += [conv_bn(cin, mid, 1), act()]
        layers += [conv_bn(mid, mid, block.kernel, block.stride, groups=mid), act()]
        if block.se:
            layers.append(SqueezeExcite(mid))
        layers.append(conv_bn(mid, cout, 1))
        self.body = nn.Sequential(*layers)
        self.residual = block.stride == 1 and cin == cout
        self.in_channels, self.out_channels, self.stride = cin, cout, block.stride

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    """Stem, inverted residual blocks, and a final 1x1 conv to 6x the last width."""

    def __init__(
        self,
        in_channels: int = 3,
        width: float = 1.0,
        blocks: tuple[Block, ...] = SMALL_BLOCKS,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        stem = divisible(16 * width)
        layers: list[nn.Module] = [conv_bn(in_channels, stem, 3, stem_stride), nn.Hardswish()]
        cin = stem
        for block in blocks:
            layers.append(InvertedResidual(cin, block, width))
            cin = layers[-1].out_channels
        self.out_channels = 6 * cin
        layers += [conv_bn(cin, self.out_channels, 1), nn.Hardswish()]
        self.features = nn.Sequential(*layers)

    @property
    def last_layer(self) -> list[nn.Parameter]:
        """Parameters of the last shared layer (the final 1x1 conv and its BatchNorm)."""
        return list(self.features[-2].parameters())

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class MultiHeadCNN(nn.Module):
    """A shared MobileNetV3-Small encoder with one small classifier head per task."""

    def __init__(
        self, tasks: int, classes: int = 10, in_channels: int = 3, width: float = 1.0
    ) -> None:
        super().__init__()
        self.encoder = MobileNetV3Small(in_channels, width)
        c = self.encoder.out_channels
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(c, 128), nn.Hardswish(), nn.Linear(128, classes))
            for _ in range(tasks)
        )

    def features(self, x: Tensor) -> Tensor:
        """The shared representation: the encoder's globally pooled map."""
        return self.encoder(x).mean((2, 3))

    def forward(self, x: Tensor, tasks: list[int] | None = None) -> list[Tensor]:
        """Logits of the heads in ``tasks`` (all by default), in that order."""
        h = self.features(x)
        return [self.heads[t](h) for t in (range(len(self.heads)) if tasks is None else tasks)]


class MaskedAutoencoder(nn.Module):
    """MobileNetV3-Small encoder (stride 16 with ``stem_stride=1``) and an upsampling decoder.

    The decoder doubles the resolution once per strided encoder block (nearest upsample,
    3x3 conv, BN, hardswish) and adds the encoder's map that entered that block (U-Net
    style); a 1x1 conv and a sigmoid end it, so outputs are images in [0, 1].
    """

    def __init__(self, channels: int = 1, width: float = 0.5) -> None:
        super().__init__()
        self.encoder = MobileNetV3Small(channels, width, stem_stride=1)
        strided = [
            m for m in self.encoder.features if isinstance(m, InvertedResidual) and m.stride > 1
        ]
        cin = self.encoder.out_channels
        self.up = nn.ModuleList()
        for block in reversed(strided):
            self.up.append(nn.Sequential(conv_bn(cin, block.in_channels, 3), nn.Hardswish()))
            cin = block.in_channels
        self.head = nn.Conv2d(cin, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for layer in self.encoder.features:
            if isinstance(layer, InvertedResidual) and layer.stride > 1:
                skips.append(x)
            x = layer(x)
        for up, skip in zip(self.up, reversed(skips), strict=True):
            x = up(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")) + skip
        return torch.sigmoid(self.head(x))
