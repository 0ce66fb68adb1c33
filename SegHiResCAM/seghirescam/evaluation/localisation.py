"""Localisation of a map on one slice: where its mass lies, and whether its maximum is in M.

Arrays are 2D (H, W) slices in the display convention; masks are bool.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["disk", "dilate", "localisation_metrics", "LOCALISATION_METRICS"]

LOCALISATION_METRICS = ("mass_in_m", "mass_in_m_dilated", "pointing", "pointing_dilated", "mass_other",
                        "mass_outside_body", "zero_map")


def disk(radius: int) -> np.ndarray:
    """A (2r+1, 2r+1) bool disk, the structuring element of ``dilate``."""
    grid = np.arange(-radius, radius + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a 2D (H, W) or stacked (B, H, W) mask in-plane by a disk of ``radius`` pixels.

    Raises:
        ValueError: If radius < 0.
    """
    if radius < 0:
        raise ValueError(f"the dilation radius must be >= 0 pixels, got {radius}")
    mask = np.asarray(mask, dtype=bool)
    if radius == 0:
        return mask.copy()
    structure = disk(radius)
    if mask.ndim == 3:
        structure = structure[None]
    return ndimage.binary_dilation(mask, structure=structure)


def localisation_metrics(saliency: np.ndarray, m: np.ndarray, *, dilation: int = 3, other: np.ndarray | None = None,
                         body: np.ndarray | None = None) -> dict[str, float]:
    """Mass shares and the pointing game for one map on one slice.

    Args:
        saliency: Map (H, W), values >= 0 (a displayed CAM after ReLU).
        m: Pixel set M (H, W) bool.
        dilation: Radius in pixels of "M dilated".
        other: Labelled structures M does not include (e.g. the other kidney), (H, W) bool.
        body: The body outline (H, W) bool.

    Returns:
        ``mass_in_m``, ``mass_in_m_dilated``: share of the map's mass inside M (dilated);
        ``pointing``, ``pointing_dilated``: 1.0 if every pixel holding the map's maximum lies in M
        (dilated), else 0.0, so a constant map misses; ``mass_other``, ``mass_outside_body``: share of
        the mass on ``other`` and outside ``body`` (NaN when not given); ``zero_map``: 1.0 for a map
        without mass. A map without mass has NaN shares and misses the pointing game.

    Raises:
        ValueError: If shapes disagree or the map is negative or not finite.
    """
    saliency = np.asarray(saliency, dtype=np.float64)
    m = np.asarray(m, dtype=bool)
    if saliency.ndim != 2 or m.shape != saliency.shape:
        raise ValueError(f"map and M must be (H, W) of one shape, got {saliency.shape} and {m.shape}")
    if not np.isfinite(saliency).all() or saliency.min() < 0:
        raise ValueError("the map must be finite and >= 0 (a CAM after ReLU)")
    total = saliency.sum()
    widened = dilate(m, dilation)
    nan = float("nan")
    if total <= 0:
        return {"mass_in_m": nan, "mass_in_m_dilated": nan, "pointing": 0.0, "pointing_dilated": 0.0,
                "mass_other": nan, "mass_outside_body": nan, "zero_map": 1.0}
    peak = saliency == saliency.max()

    def share(mask: np.ndarray | None) -> float:
        return nan if mask is None else float(saliency[np.asarray(mask, dtype=bool)].sum() / total)

    return {"mass_in_m": share(m), "mass_in_m_dilated": share(widened),
            "pointing": float(np.all(m[peak])), "pointing_dilated": float(np.all(widened[peak])),
            "mass_other": share(other), "mass_outside_body": nan if body is None else share(~np.asarray(body, bool)),
            "zero_map": 0.0}
