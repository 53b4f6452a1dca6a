"""The hand-written MobileNetV3-Small-like networks: layout, shapes, and what is shared."""

from __future__ import annotations

import torch
from torch import nn

from gradaccum.models.vision import (
    SMALL_BLOCKS,
    InvertedResidual,
    MaskedAutoencoder,
    MobileNetV3Small,
    MultiHeadCNN,
    divisible,
)


def test_divisible_rounds_to_multiples_of_eight_and_never_far_below():
    assert [divisible(v) for v in (16, 20, 3, 72 * 0.5, 88 * 0.25)] == [16, 24, 8, 40, 24]


def test_encoder_has_the_mobilenet_v3_small_layout():
    enc = MobileNetV3Small()
    blocks = [m for m in enc.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == len(SMALL_BLOCKS) == 11
    assert [b.stride for b in blocks] == [b.stride for b in SMALL_BLOCKS]
    assert enc.out_channels == 576
    depthwise = [m for m in enc.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 11 and all(m.groups == m.in_channels for m in depthwise)
    assert sum(isinstance(m, nn.Hardswish) for m in enc.modules()) > 0
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 576, 2, 2)
    assert enc.last_layer == list(enc.features[-2].parameters())


def test_multi_head_cnn_runs_only_the_heads_asked_for():
    model = MultiHeadCNN(3, classes=5, width=0.25)
    x = torch.randn(2, 3, 32, 32)
    assert [o.shape for o in model(x)] == [(2, 5)] * 3
    outs = model(x, [2])
    assert len(outs) == 1
    outs[0].sum().backward()
    assert model.heads[0][0].weight.grad is None
    assert model.heads[2][0].weight.grad is not None


def test_masked_autoencoder_reconstructs_images_in_the_unit_interval():
    model = MaskedAutoencoder(channels=1, width=0.25)
    with torch.no_grad():
        y = model(torch.randn(3, 1, 16, 16))
    assert y.shape == (3, 1, 16, 16)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
