"""HiResCAM's exactness as a metric, and detection of layers whose maps collapse to the logit map.

At a layer feeding a linear 1x1-convolution head, the pre-ReLU Seg-HiRes map sums to
y_M - |M| b_c exactly, and it equals (y_c - b_c) on M and 0 elsewhere: the map is the logit map
itself and explains nothing beyond the segmentation (method.md, "Which layer to explain").

Arrays: x (B, C, H, W) tensor, m (B, H, W) bool tensor; results per slice (B,).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from seghirescam.cam.capture import evaluation_mode
from seghirescam.cam.engine import explain_slices
from seghirescam.cam.padding import pad_slices, size_multiple
from seghirescam.cam.methods import CAMMethod
from seghirescam.models.unet import head_input_layers

__all__ = ["head_bias", "exactness_errors", "collapse_errors", "collapsed_layers", "COLLAPSE_TOLERANCE"]

COLLAPSE_TOLERANCE = 1e-3
_HIRES = "seg-hires-grad-cam"


def head_bias(model: nn.Module) -> torch.Tensor | None:
    """The bias (classes,) of the model's 1x1-convolution ``head``, zeros if it has none; None without such a head."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Conv2d) or head.kernel_size != (1, 1):
        return None
    return head.bias.detach().float() if head.bias is not None else torch.zeros(head.out_channels)


def _padded_logits(model: nn.Module, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of x padded like the engine pads it (replicate, bottom/right), and M padded with False."""
    xp, mp = pad_slices(x, size_multiple(model), m)
    with evaluation_mode(model), torch.no_grad():
        return model(xp).float(), mp


def exactness_errors(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int, *,
                     layers: Sequence[str], methods: Sequence[str | CAMMethod]) -> dict[tuple[str, str], np.ndarray]:
    """Relative gap between the sum of each pre-ReLU map and y_M - |M| b_c, per slice.

    Args:
        model: A model with a 1x1-convolution ``head`` (e.g. ``UNet2D``).
        x, m, target_class, layers, methods: As for ``explain_slices``.

    Returns:
        {(method, layer): (B,) |sum(map) - (y_M - |M| b_c)| / |y_M - |M| b_c|}; 0 is exact. Only a
        layer that feeds the head directly is expected to be exact, and only for Seg-HiRes-Grad CAM.

    Raises:
        ValueError: If the model has no 1x1-convolution ``head``.
    """
    bias = head_bias(model)
    if bias is None:
        raise ValueError("exactness needs a model whose last layer is a 1x1 convolution named 'head'")
    logits, mp = _padded_logits(model, x, m)
    size = mp.flatten(1).sum(1).double()
    target = (logits[:, target_class] * mp).flatten(1).sum(1).double() - size * float(bias[target_class])
    raw = explain_slices(model, x, m, target_class, layers=layers, methods=methods, raw=True)
    scale = target.abs().clamp_min(1e-12)
    return {key: ((maps.flatten(1).sum(1).double() - target).abs() / scale).cpu().numpy()
            for key, maps in raw.items()}


def collapse_errors(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int, *,
                    layers: Sequence[str]) -> dict[str, np.ndarray]:
    """How far each layer's pre-ReLU Seg-HiRes map is from the logit map (y_c - b) on M, 0 elsewhere.

    The offset b is fitted per slice (the mean of y_c - map over M), so no knowledge of the head is
    needed. A layer at another resolution than the output cannot collapse (error 1).

    Returns:
        {layer: (B,) ||map - (y_c - b) M|| / ||(y_c - b) M||}; near 0 means the map is the logit map.
    """
    logits, mp = _padded_logits(model, x, m)
    raw = explain_slices(model, x, m, target_class, layers=layers, methods=(_HIRES,), raw=True)
    y = logits[:, target_class].double()
    errors = {}
    for (_, layer), maps in raw.items():
        maps = maps.double()
        if maps.shape != y.shape:
            errors[layer] = np.ones(len(x))
            continue
        count = mp.flatten(1).sum(1).clamp_min(1)
        offset = ((y - maps) * mp).flatten(1).sum(1) / count
        expected = (y - offset[:, None, None]) * mp
        norm = expected.flatten(1).norm(dim=1).clamp_min(1e-12)
        errors[layer] = ((maps - expected).flatten(1).norm(dim=1) / norm).cpu().numpy()
    return errors


def collapsed_layers(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int, *,
                     layers: Sequence[str], tolerance: float = COLLAPSE_TOLERANCE) -> dict[str, bool]:
    """Flag the layers whose maps collapse to the logit map: known head inputs, or measured.

    A layer is flagged if ``head_input_layers(model)`` names it, or if on every slice with a
    non-empty M its Seg-HiRes map is the logit map within ``tolerance`` (``collapse_errors``).

    Returns:
        {layer: flagged}.
    """
    known = set(head_input_layers(model))
    errors = collapse_errors(model, x, m, target_class, layers=layers)
    present = m.flatten(1).any(1).cpu().numpy()
    return {layer: layer in known or bool(present.any() and np.all(errors[layer][present] < tolerance))
            for layer in layers}
