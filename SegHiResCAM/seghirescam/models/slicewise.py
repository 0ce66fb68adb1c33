"""2D models explained slice by slice: the CT turned into the card's axial slices and back.

Arrays here are in the CT's (k, j, i) order; the model sees (s, r, c) axial slices in its card's
convention (``imaging.volumes.SliceOrientation``: rows anterior to posterior, columns patient
right to left), preprocessed by the card (HU window, z-score); the maps come back in (k, j, i).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from seghirescam.cam.engine import DEFAULT_METHODS, explain_volume
from seghirescam.cam.inference import predict_volume
from seghirescam.cam.layers import default_layers
from seghirescam.cam.methods import CAMMethod
from seghirescam.cam.result import ExplanationResult
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION
from seghirescam.imaging.volumes import SliceOrientation, Volume

if TYPE_CHECKING:
    from seghirescam.models.loading import LoadedModel

__all__ = ["explain_slicewise", "predict_slicewise"]


def predict_slicewise(ct: Volume, loaded: LoadedModel, *, device: str = "auto",
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The model's label map of a CT, (k, j, i) uint8 on the CT's grid."""
    orientation = SliceOrientation.from_geometry(ct.geometry)
    labels = predict_volume(loaded.model, orientation.to_slices(ct.array), preprocess=loaded.card.preprocess,
                            device=device, progress=progress)
    return np.ascontiguousarray(orientation.from_slices(labels))


def explain_slicewise(ct: Volume, mask: np.ndarray, loaded: LoadedModel, target_class: int, *,
               layers: Sequence[str] | None = None, methods: Sequence[str | CAMMethod] = DEFAULT_METHODS,
               device: str = "auto", batch_size: int | str = "auto", normalize: str = DEFAULT_NORMALIZATION,
               progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
               map_dtype: np.dtype | type = np.float32, autocast: str | None = None) -> ExplanationResult:
    """Explain a CT slice by slice along its axial axis, whatever its direction matrix.

    Args:
        ct: The CT (HU) with its geometry.
        mask: Pixel set M, bool (k, j, i) on the CT's grid.
        loaded: Model and card (the card gives preprocessing and the size policy).
        target_class: Class c.
        layers: Layers to explain (default: ``cam.layers.default_layers`` of the card's layers).
        methods, device, batch_size, normalize, progress, cancel, map_dtype, autocast: As for
            ``explain_volume``.

    Returns:
        The result with maps in the CT's (k, j, i) order (views, C-contiguous only when the CT is stored
        axially); ``axis`` is the CT's axial numpy axis and ``slices_explained`` indexes along it.

    Raises:
        ValueError: If the mask is not on the CT's grid, or as ``explain_volume``.
    """
    if mask.shape != ct.array.shape:
        raise ValueError(f"the pixel set has shape {mask.shape} but the CT has {ct.array.shape}")
    orientation = SliceOrientation.from_geometry(ct.geometry)
    result = explain_volume(loaded.model, orientation.to_slices(ct.array), orientation.to_slices(mask), target_class,
                            layers=tuple(layers or default_layers(loaded.card.layers)), methods=methods, axis=0,
                            batch_size=batch_size, device=device, normalize=normalize,
                            preprocess=loaded.card.preprocess, pad_to_multiple=loaded.card.size_multiple,
                            progress=progress, cancel=cancel, map_dtype=map_dtype, autocast=autocast)
    n = ct.array.shape[orientation.permutation[0]]
    to_ct_index = (lambda s: n - 1 - s) if orientation.flips[0] else (lambda s: s)
    # Views in the CT's (k, j, i) order of the maps held as axial slices, not copies: a CT stored with its axial
    # axis last (KiTS23) then costs the memory of an axial one (untouched zero pages outside M's slices stay
    # unallocated); a writer that needs contiguous data copies one map at a time.
    maps = {key: orientation.from_slices(value) for key, value in result.maps.items()}
    return dataclasses.replace(
        result,
        maps=maps,
        scales={key: scale[::-1].copy() if orientation.flips[0] else scale for key, scale in result.scales.items()},
        slices_explained=tuple(sorted(to_ct_index(s) for s in result.slices_explained)),
        axis=orientation.permutation[0],
    )
