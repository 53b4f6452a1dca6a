"""An AlexNet-style CNN for 32x32 inputs, written out by hand (no torchvision).

The CIFAR-sized layout of Krizhevsky et al. 2012: five convolutions (5x5, 5x5, then
three 3x3) with ReLU, three 2x2 max-pools, and three fully connected layers. No
BatchNorm or dropout, so every sample is treated independently, as per-sample clipping
needs. ``width`` scales every channel count and the hidden width. Hidden layers start
from He et al.'s ReLU initialization with zero biases (without normalization layers,
PyTorch's default leaves this depth at chance for hundreds of SGD steps); the output
layer keeps PyTorch's smaller default, so the first logits are not huge.
"""

from __future__ import annotations

from torch import Tensor, nn

CHANNELS = (64, 192, 384, 256, 256)
HIDDEN = 4096


class AlexNet(nn.Module):
    """AlexNet-style classifier of (B, in_channels, 32, 32) images."""

    def __init__(self, classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in CHANNELS)
        hidden = max(1, round(HIDDEN * width))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c4, c5, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c5 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )
        hidden_layers = [m for m in self.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        for m in hidden_layers[:-1]:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
