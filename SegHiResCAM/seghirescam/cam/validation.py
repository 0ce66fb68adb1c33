"""Checks on user input, each failing with a message that names the problem."""

from __future__ import annotations

import numpy as np

__all__ = ["check_volume_inputs", "check_target_class"]


def check_target_class(target_class: int, num_classes: int | None) -> None:
    """Check that c is an int in [0, num_classes) (the range is skipped when unknown).

    Raises:
        TypeError: If c is not an int.
        ValueError: If c is out of range; the message says how many classes there are.
    """
    if isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer)):
        raise TypeError(f"target_class must be an int, got {type(target_class).__name__}")
    if target_class < 0 or (num_classes is not None and target_class >= num_classes):
        raise ValueError(f"target_class {target_class} is out of range: the model has {num_classes} classes "
                         f"(0..{num_classes - 1})" if num_classes is not None else
                         f"target_class must be >= 0, got {target_class}")


def check_volume_inputs(volume: np.ndarray, mask: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate a volume, its pixel-set mask and the slicing axis.

    Returns:
        (volume, mask, axis) with axis made non-negative.

    Raises:
        ValueError: Volume not 3D, not numeric, holding NaN/Inf; mask of another shape; bad axis.
        TypeError: Mask not boolean.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D, got {volume.ndim}D with shape {volume.shape}")
    if not (np.issubdtype(volume.dtype, np.number) and not np.issubdtype(volume.dtype, np.complexfloating)):
        raise ValueError(f"volume must be real numbers, got dtype {volume.dtype}")
    if np.issubdtype(volume.dtype, np.floating) and volume.size and not (np.isfinite(volume.min())
                                                                        and np.isfinite(volume.max())):
        # min and max propagate NaN and reach +-Inf: two passes with no volume-sized temporary; counted only when bad
        bad = int(np.count_nonzero(~np.isfinite(volume)))
        raise ValueError(f"volume holds {bad} NaN or Inf values; fill or crop them before explaining")
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy bool array, got {type(mask).__name__}")
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be boolean (the pixel set M), got dtype {mask.dtype}; e.g. pass labels == value")
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2 (or negative), got {axis!r}")
    return volume, mask, int(axis) % 3
