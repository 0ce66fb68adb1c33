"""A CT in, maps on the CT's own grid out, for any explainable model.

The model decides how it sees the CT (slices or patches, orientation, spacing, intensities) and
returns its maps on the CT's grid: see ``models.explainable.ExplainableModel``. Arrays are in the
CT's (k, j, i) order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from seghirescam.cam.engine import DEFAULT_METHODS
from seghirescam.cam.methods import CAMMethod
from seghirescam.cam.result import ExplanationResult
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION
from seghirescam.imaging.volumes import Volume
from seghirescam.models.explainable import ExplainableModel

__all__ = ["explain_ct", "predict_ct"]


def predict_ct(ct: Volume, model: ExplainableModel, *, device: str = "auto",
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The model's label map of a CT, (k, j, i) on the CT's grid."""
    return model.predict_ct(ct, device=device, progress=progress)


def explain_ct(ct: Volume, mask: np.ndarray, model: ExplainableModel, target_class: int, *,
               layers: Sequence[str] | None = None, methods: Sequence[str | CAMMethod] = DEFAULT_METHODS,
               device: str = "auto", batch_size: int | str = "auto", normalize: str = DEFAULT_NORMALIZATION,
               progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
               map_dtype: np.dtype | type = np.float32, autocast: str | None = None) -> ExplanationResult:
    """Explain class ``target_class`` of any explainable model on a CT, whatever its direction matrix.

    Args:
        ct: The CT (HU) with its geometry.
        mask: Pixel set M, bool (k, j, i) on the CT's grid.
        model: The project's U-Net with its card, an nnU-Net results folder, ... (``models.explainable``).
        target_class: Class c.
        layers: Layers to explain (default: the model's ``default_layer``).
        methods, device, batch_size, normalize, progress, cancel, map_dtype: As for ``explain_volume``.
        autocast: None (float32, default) or "bf16", an approximate preview (``explain_volume``); passed to
            the model only when set, so models written before the option keep working.

    Returns:
        The result with maps in the CT's (k, j, i) order; ``axis`` is the CT's axial numpy axis and
        ``slices_explained`` indexes along it.

    Raises:
        ValueError: If the mask is not on the CT's grid, or for bad layers, methods or classes.
    """
    if mask.shape != ct.array.shape:
        raise ValueError(f"the pixel set has shape {mask.shape} but the CT has {ct.array.shape}")
    return model.explain_ct(ct, mask, target_class, layers=layers, methods=methods, device=device,
                            batch_size=batch_size, normalize=normalize, progress=progress, cancel=cancel,
                            map_dtype=map_dtype, **({"autocast": autocast} if autocast is not None else {}))
