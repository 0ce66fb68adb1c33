"""Normalization of CAM maps: by the volume's max, by each slice's max, or none."""

from __future__ import annotations

import numpy as np

from seghirescam.cam.vocabulary import NORMALIZATIONS

__all__ = ["normalize_maps", "check_normalize", "NORMALIZATIONS"]


def check_normalize(mode: str) -> str:
    """Returns: ``mode`` if it is a key of ``NORMALIZATIONS``.

    Raises:
        ValueError: For an unknown mode (the message lists the known ones).
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
    return mode


def normalize_maps(stack: np.ndarray, mode: str) -> np.ndarray:
    """Divide a stack of non-negative maps in place, only where the max is > 0.

    No epsilon is added, so tiny maps keep their shape; all-zero maps stay zero.

    Args:
        stack: Maps (S, H, W), slices first (a view into the result is fine).
        mode: "volume" (one max for the stack), "slice" (each slice by its own max) or "none".

    Returns:
        The scale each slice was divided by, (S,) float64: 1 where nothing was divided.

    Raises:
        ValueError: For an unknown mode.
    """
    check_normalize(mode)
    scales = np.ones(stack.shape[0])
    if mode == "none" or stack.size == 0:
        return scales
    maxima = stack.max(axis=tuple(range(1, stack.ndim))).astype(np.float64)  # no copy of a strided view
    if mode == "volume":
        top = maxima.max()
        if top > 0:
            stack /= stack.dtype.type(top)
            scales[:] = top
        return scales
    positive = maxima > 0
    for index in np.flatnonzero(positive):
        stack[index] /= stack.dtype.type(maxima[index])
    scales[positive] = maxima[positive]
    return scales
