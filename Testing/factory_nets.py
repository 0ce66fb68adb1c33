"""Factory functions for ``load_factory_model`` tests: plain PyTorch networks built by name.

Arrays: (B, C, H, W) in, logits (B, classes, H, W) out; H, W multiples of 4.
"""

from __future__ import annotations

import torch
from torch import nn

NOT_A_FUNCTION = 3


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(1, out_channels), nn.ReLU())


class TinySegNet(nn.Module):
    """Two levels down, two up, a 1x1 head: an encoder-decoder that is not the project's U-Net."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.stem = _block(in_channels, width)
        self.down = nn.Sequential(nn.MaxPool2d(2), _block(width, 2 * width))
        self.deep = nn.Sequential(nn.MaxPool2d(2), _block(2 * width, 4 * width))
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2), _block(4 * width, 2 * width))
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2), _block(4 * width, width))
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = self.down(self.stem(x))
        up = self.up2(self.deep(down))
        return self.head(self.up1(torch.cat([up, down], 1)))


def tiny_segnet(width: int = 4, num_classes: int = 3) -> TinySegNet:
    """The factory: a TinySegNet with seeded random weights."""
    torch.manual_seed(0)
    return TinySegNet(1, num_classes, width)


class TinySegNet3D(nn.Module):
    """A 3D encoder-decoder: one level down and up with a skip, a 1x1x1 head (input sizes multiples of 2)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(in_channels, width, 3, padding=1), nn.ReLU())
        self.deep = nn.Sequential(nn.MaxPool3d(2), nn.Conv3d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.upsample = nn.Upsample(scale_factor=2)
        self.up = nn.Sequential(nn.Conv3d(3 * width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        return self.head(self.up(torch.cat([self.upsample(self.deep(stem)), stem], 1)))


def tiny_segnet_3d(width: int = 4, num_classes: int = 3) -> nn.Module:
    """The 3D factory: (B, 1, d, h, w) -> (B, classes, d, h, w), seeded random weights."""
    torch.manual_seed(0)
    return TinySegNet3D(1, num_classes, width)


def flat_3d(**_kwargs: object) -> nn.Module:
    """A 3D network of two convolutions (for the card checks)."""
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))


def network_1d(**_kwargs: object) -> nn.Module:
    """A 1D network: neither 2D nor 3D."""
    return nn.Sequential(nn.Conv1d(1, 3, 1))


def not_a_network(**_kwargs: object) -> str:
    """A factory that returns no module."""
    return "not a network"


def broken_factory(**_kwargs: object) -> nn.Module:
    """A factory whose own code fails."""
    raise RuntimeError("this factory needs a GPU")
