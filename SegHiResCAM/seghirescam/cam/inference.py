"""Plain segmentation with the model: the label volume it predicts, batched, without gradients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from seghirescam.cam.capture import evaluation_mode
from seghirescam.cam.padding import pad_slices, size_multiple
from seghirescam.cam.runtime import model_on_device, resolve_device
from seghirescam.cam.validation import check_volume_inputs

__all__ = ["predict_volume", "predict_slices"]


def predict_slices(model: nn.Module, x: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Logits for a batch x (B, C, H, W), padded to ``multiple`` (``padding.pad_slices``) and cropped back."""
    height, width = x.shape[-2:]
    padded, _ = pad_slices(x, multiple)
    with torch.no_grad():
        return model(padded)[..., :height, :width]


def predict_volume(model: nn.Module, volume: np.ndarray, *, axis: int = 0,
                   preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   device: str | torch.device = "auto", batch_size: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Argmax label volume predicted slice by slice along ``axis``.

    Args:
        model: Maps (B, C, H, W) to logits (B, classes, H, W); left as found.
        volume: 3D array.
        axis: Slicing axis.
        preprocess: Raw slices (B, H, W) -> model input (B, C, H, W); default adds a channel.
        device: As for ``explain_volume``.
        batch_size: Slices per forward.
        progress: Called as progress(done, total) after each batch.

    Returns:
        uint8 labels in the volume's shape.
    """
    volume, _, axis = check_volume_inputs(volume, np.zeros(np.shape(volume), dtype=bool), axis)
    torch_device = resolve_device(device)
    work_model = model_on_device(model, torch_device)
    multiple = size_multiple(work_model)
    slices = np.moveaxis(volume, axis, 0)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    out = np.moveaxis(labels, axis, 0)
    with evaluation_mode(work_model):
        for start in range(0, slices.shape[0], batch_size):
            raw = torch.from_numpy(np.ascontiguousarray(slices[start:start + batch_size], dtype=np.float32))
            raw = raw.to(torch_device)
            x = preprocess(raw) if preprocess is not None else raw[:, None]
            out[start:start + batch_size] = predict_slices(work_model, x, multiple).argmax(1).to(torch.uint8).cpu().numpy()
            if progress is not None:
                progress(min(start + batch_size, slices.shape[0]), slices.shape[0])
    return labels
