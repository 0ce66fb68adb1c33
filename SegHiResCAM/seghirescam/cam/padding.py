"""Padding slices to the model's size multiple: the one rule for explaining, predicting and checking.

A U-Net with k poolings needs H and W divisible by 2^k. Slices are padded at the bottom and the
right: the image by repeating its edge values (no artificial border), the pixel set M with False
(padding is never explained). Results are cropped back to (H, W) by the caller.
Arrays: x (B, C, H, W), m (B, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["size_multiple", "padded_size", "pad_slices"]


def size_multiple(model: nn.Module, requested: int | None = None) -> int:
    """The multiple H and W are padded to: ``requested``, else ``model.size_multiple``, else 1.

    Raises:
        ValueError: If it is not a positive int.
    """
    multiple = getattr(model, "size_multiple", 1) if requested is None else requested
    if int(multiple) != multiple or multiple < 1:
        raise ValueError(f"pad_to_multiple must be a positive int, got {multiple!r}")
    return int(multiple)


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(H', W'): H and W rounded up to multiples of ``multiple`` (``size_multiple``), as ``pad_slices`` pads them."""
    return height + -height % multiple, width + -width % multiple


def pad_slices(x: torch.Tensor, multiple: int,
               m: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pad x (replicate) and m (False) at the bottom/right so H and W are multiples of ``multiple``.

    Args:
        x: Input batch (B, C, H, W).
        multiple: From ``size_multiple``.
        m: Pixel sets (B, H, W) bool, or None.

    Returns:
        (x padded, m padded or None); the inputs themselves when no padding is needed.
    """
    height, width = x.shape[-2:]
    padded_height, padded_width = padded_size(height, width, multiple)
    pad_h, pad_w = padded_height - height, padded_width - width
    if not pad_h and not pad_w:
        return x, m
    x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, None if m is None else F.pad(m, (0, pad_w, 0, pad_h), value=False)
