"""The CAM methods: each is a small function of (A, G) giving the map before ReLU.

Arrays: ``A`` (activations) and ``G`` (gradient of y_M with respect to A) are
(B, K, h, w) float tensors; a method returns (B, h, w). The engine applies ReLU, upsampling
and normalisation, identically for every method. Adding a method means adding a function
here and one entry in ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["CAMMethod", "METHODS", "resolve_method", "seg_xres_cam"]

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CAMMethod:
    """A named CAM method.

    Attributes:
        name: The key under which its maps are returned, e.g. "seg-hires-grad-cam".
        combine: (A, G) -> pre-ReLU map, (B, K, h, w) x 2 -> (B, h, w).
    """

    name: str
    combine: Combine


def _seg_grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-Grad CAM (Vinogradova et al.): channel weights are the spatial mean of the gradient."""
    alpha = gradients.mean(dim=(2, 3), keepdim=True)
    return (alpha * activations).sum(dim=1)


def _seg_hires_grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-HiRes-Grad CAM (Rheude et al.): element-wise gradient times activation."""
    return (gradients * activations).sum(dim=1)


def seg_xres_cam(pool: int = 2, reduce: str = "max") -> CAMMethod:
    """Seg-XRes CAM (Hasany et al. 2023): the gradient pooled over pool x pool windows.

    The pooled gradient is upsampled (nearest) back to h x w and multiplied element-wise
    with the activations. Windows at the border may be partial (ceil mode).

    Args:
        pool: Window size p (>= 1). p = 1 equals Seg-HiRes-Grad CAM.
        reduce: "max" or "mean" over each window.

    Returns:
        The method, named "seg-xres-cam" for the defaults and "seg-xres-cam-p{pool}-{reduce}"
        otherwise, so differently configured runs never share a key.

    Raises:
        ValueError: If pool < 1 or reduce is not "max" or "mean".
    """
    if int(pool) != pool or pool < 1:
        raise ValueError(f"seg-xres-cam pool must be a positive int, got {pool!r}")
    if reduce not in ("max", "mean"):
        raise ValueError(f"seg-xres-cam reduce must be 'max' or 'mean', got {reduce!r}")
    pool = int(pool)

    def combine(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        if reduce == "max":
            pooled = F.max_pool2d(gradients, pool, ceil_mode=True)
        else:
            # Mean over the valid part of border windows: sum-pool / count-pool.
            pooled = F.avg_pool2d(gradients, pool, ceil_mode=True, count_include_pad=False)
        upsampled = pooled.repeat_interleave(pool, dim=2).repeat_interleave(pool, dim=3)
        upsampled = upsampled[..., : gradients.shape[2], : gradients.shape[3]]
        return (upsampled * activations).sum(dim=1)

    name = "seg-xres-cam" if (pool, reduce) == (2, "max") else f"seg-xres-cam-p{pool}-{reduce}"
    return CAMMethod(name, combine)


METHODS: dict[str, CAMMethod] = {
    "seg-grad-cam": CAMMethod("seg-grad-cam", _seg_grad_cam),
    "seg-hires-grad-cam": CAMMethod("seg-hires-grad-cam", _seg_hires_grad_cam),
    "seg-xres-cam": seg_xres_cam(),
}


def resolve_method(spec: str | CAMMethod) -> CAMMethod:
    """Turn a method name or a ``CAMMethod`` into a ``CAMMethod``.

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
        TypeError: For anything that is neither a string nor a ``CAMMethod``.
    """
    if isinstance(spec, CAMMethod):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a method is a name or a CAMMethod, got {type(spec).__name__}")
    try:
        return METHODS[spec]
    except KeyError:
        raise ValueError(f"unknown CAM method {spec!r}; known methods: {', '.join(METHODS)}") from None
