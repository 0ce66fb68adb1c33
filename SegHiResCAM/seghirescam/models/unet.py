"""The project's 2D U-Net, with every level a named, explainable submodule.

Arrays: inputs are (B, C_in, H, W) float tensors; logits are (B, classes, H, W).
H and W must be multiples of ``2 ** depth`` (``UNet2D.size_multiple``); the engine pads
slices to that multiple and crops the maps back, so callers never see the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["UNet2D", "ConvBlock", "head_input_layers"]


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by batch-norm and ReLU (the classic U-Net level)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class UNet2D(nn.Module):
    """A 2D U-Net whose levels are the explainable layers.

    Named levels, each "the activations after the convolutions of a level, before pooling":
    ``enc1``..``enc{depth}``, ``bottleneck``, ``dec{depth}``..``dec1``; then ``head``, a 1x1
    convolution to the class logits. ``dec1`` feeds the head directly, so CAMs there collapse
    to the logit map (see ``head_input_layers``).

    Args:
        in_channels: Channels of the input slice (1 for CT).
        num_classes: Output classes, background included.
        widths: Channels of ``enc1``..``enc{depth}``; its length is the depth. The bottleneck
            has twice the last width. The paper uses (64, 128, 256, 512).

    Raises:
        ValueError: If widths is empty or holds a non-positive number, or a count is < 1.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4, widths: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.widths = widths
        self.depth = len(widths)
        self.size_multiple = 2**self.depth
        self.pool = nn.MaxPool2d(2)
        previous = self.in_channels
        for level, width in enumerate(widths, start=1):
            self.add_module(f"enc{level}", ConvBlock(previous, width))
            previous = width
        self.bottleneck = ConvBlock(previous, 2 * widths[-1])
        previous = 2 * widths[-1]
        for level in range(self.depth, 0, -1):
            width = widths[level - 1]
            self.add_module(f"up{level}", nn.ConvTranspose2d(previous, width, 2, stride=2))
            self.add_module(f"dec{level}", ConvBlock(2 * width, width))
            previous = width
        self.head = nn.Conv2d(previous, self.num_classes, 1)

    @property
    def layer_names(self) -> list[str]:
        """The explainable levels in forward order."""
        levels = range(1, self.depth + 1)
        return [f"enc{i}" for i in levels] + ["bottleneck"] + [f"dec{i}" for i in reversed(levels)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C_in, H, W) to logits (B, classes, H, W); H, W multiples of size_multiple."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"H and W must be multiples of {self.size_multiple}, got {tuple(x.shape[-2:])}")
        skips = []
        for level in range(1, self.depth + 1):
            x = getattr(self, f"enc{level}")(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for level in range(self.depth, 0, -1):
            x = getattr(self, f"up{level}")(x)
            x = getattr(self, f"dec{level}")(torch.cat([skips[level - 1], x], dim=1))
        return self.head(x)


def head_input_layers(model: nn.Module) -> list[str]:
    """Layers that feed a linear 1x1-convolution head directly.

    At such a layer Seg-HiRes-Grad CAM equals ReLU(y_c - b_c) on M and Seg-Grad CAM a scaled
    ReLU(y_c - b_c): the maps collapse to the segmentation itself (method.md). Known only for
    ``UNet2D``; an empty list for other models.
    """
    return ["dec1"] if isinstance(model, UNet2D) else []
