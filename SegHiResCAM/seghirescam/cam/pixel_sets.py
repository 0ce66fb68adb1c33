"""Builders of the pixel set M: boolean arrays of the volume's shape, (k, j, i) like the volume.

The names users choose pixel sets by (``PIXEL_SETS``) live in ``seghirescam.cam.vocabulary``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from seghirescam.cam.vocabulary import DEFAULT_POINT_RADIUS, FILE_PIXEL_SETS, PIXEL_SETS

__all__ = ["pixel_set_from_labels", "pixel_set_from_prediction", "pixel_set_whole_slices", "pixel_set_from_points",
           "DEFAULT_POINT_RADIUS", "PIXEL_SETS", "FILE_PIXEL_SETS"]

if TYPE_CHECKING:  # torch only for the prediction pixel set: the other builders serve the Slicer GUI without torch
    import torch
    from torch import nn

"""The default M around a point: an in-plane disc of this radius in pixels, on the point's own slice
(2: the point and its 12 nearest pixels, 13 in all; 0 would be the single voxel). Used for a
manifest's point (``seghirescam batch``), ``--point`` (``seghirescam explain``) and a markups
point in Slicer alike, so the same point gives the same M everywhere."""


def pixel_set_from_labels(labels: np.ndarray, values: int | Iterable[int]) -> np.ndarray:
    """M = voxels whose label is one of ``values``.

    Args:
        labels: Integer label volume.
        values: One label value or several.

    Returns:
        Bool array of the labels' shape.

    Raises:
        ValueError: If no value is given.
    """
    values = [values] if np.isscalar(values) else list(values)
    if not values:
        raise ValueError("give at least one label value for the pixel set")
    return np.isin(np.asarray(labels), values)


def pixel_set_from_prediction(model: nn.Module, volume: np.ndarray, target_class: int, *, axis: int = 0,
                              preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                              device: str | torch.device = "auto", batch_size: int = 8) -> np.ndarray:
    """M = voxels the model itself assigns to the class (argmax of its logits).

    Args:
        model, volume, axis, preprocess, device: As for ``explain_volume``.
        target_class: The class c.
        batch_size: Slices per forward pass.

    Returns:
        Bool array of the volume's shape.
    """
    from seghirescam.cam.inference import predict_volume

    return predict_volume(model, volume, axis=axis, preprocess=preprocess, device=device,
                          batch_size=batch_size) == target_class


def pixel_set_whole_slices(shape: Sequence[int], slices: Iterable[int] | None = None, *, axis: int = 0) -> np.ndarray:
    """M = every pixel of the chosen slices (all slices when ``slices`` is None).

    Raises:
        ValueError: If ``shape`` is not 3D or a slice index is out of range.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be 3D, got {shape}")
    mask = np.zeros(shape, dtype=bool)
    view = np.moveaxis(mask, axis, 0)
    chosen = range(shape[axis]) if slices is None else list(slices)
    for index in chosen:
        if not 0 <= index < shape[axis]:
            raise ValueError(f"slice {index} is out of range 0..{shape[axis] - 1}")
        view[index] = True
    return mask


def pixel_set_from_points(shape: Sequence[int], points: Iterable[Sequence[int]], *,
                          radius: int = DEFAULT_POINT_RADIUS, axis: int = 0) -> np.ndarray:
    """M = given voxels, each grown to an in-plane disc of ``radius`` pixels on its own slice.

    Args:
        shape: Volume shape.
        points: Voxel indices in the volume's array order, e.g. (k, j, i).
        radius: Disc radius in pixels within the slice (0 = the single voxel); default
            ``DEFAULT_POINT_RADIUS``.
        axis: The slicing axis (the disc lies in the plane across it).

    Raises:
        ValueError: If no point is given or a point lies outside the volume.
    """
    mask = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    points = [tuple(int(round(c)) for c in p) for p in points]
    if not points:
        raise ValueError("give at least one point for the pixel set")
    view = np.moveaxis(mask, axis, 0)
    rows, cols = np.ogrid[: view.shape[1], : view.shape[2]]
    for point in points:
        if len(point) != 3 or any(not 0 <= c < s for c, s in zip(point, mask.shape)):
            raise ValueError(f"point {point} lies outside the volume of shape {mask.shape}")
        s, r, c = point[axis], *[p for d, p in enumerate(point) if d != axis]
        view[s] |= (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
    return mask
