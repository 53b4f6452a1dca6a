"""The AlexNet-style CNN: its layout, and that it keeps samples independent."""

from __future__ import annotations

import torch
from torch import nn

from gradaccum.models.alexnet import AlexNet


def test_layout_and_output_shape():
    model = AlexNet(classes=7, in_channels=1, width=0.25)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.kernel_size for c in convs] == [(5, 5), (5, 5), (3, 3), (3, 3), (3, 3)]
    assert [c.out_channels for c in convs] == [16, 48, 96, 64, 64]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (64 * 16, 1024),
        (1024, 1024),
        (1024, 7),
    ]
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 7)


def test_samples_do_not_interact():
    """No BatchNorm: a sample's output is the same alone or in a batch (per-sample clipping
    relies on it)."""
    torch.manual_seed(0)
    model = AlexNet(width=0.1)
    x = torch.randn(4, 3, 32, 32)
    together = model(x)
    alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_he_initialization_of_hidden_layers_and_default_output_layer():
    torch.manual_seed(0)
    model = AlexNet(width=0.5)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    fc = layers[-3]
    assert abs(float(fc.weight.std()) / (2 / fc.in_features) ** 0.5 - 1) < 0.02
    assert all(float(m.bias.abs().max()) == 0 for m in layers[:-1])
    out = layers[-1]
    assert float(out.weight.abs().max()) <= out.in_features**-0.5
