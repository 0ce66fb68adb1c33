"""The CAM methods: each is a small function of (A, G) giving the map before ReLU, plus its metadata.

Arrays: ``A`` (activations) and ``G`` (gradient of y_M with respect to A) are
(B, K, h, w) float tensors, or (B, K, d, h, w) for volumetric networks; a method returns
(B, h, w) or (B, d, h, w). Every method is defined for both: "spatial" means all axes after K. The engine applies ReLU, upsampling
and normalization, identically for every method.

Adding a method is one call: ``register_method(CAMMethod(key=..., display_name=..., ...,
combine=...))``. The command line, the evaluation (tables, comparisons, plots), the figures
and the Slicer module read the registry (``METHODS`` here; its torch-free metadata in
``seghirescam.cam.method_info``), so the method shows up everywhere without further edits.

Example:
    >>> import torch
    >>> from seghirescam.cam.method_info import PlotStyle
    >>> absolute = CAMMethod(key="abs-cam", display_name="Abs CAM", short_title="Abs",
    ...                      style=PlotStyle("tab:orange", "--"), citation="example",
    ...                      description="sum_k |G| * A.",
    ...                      combine=lambda a, g: (g.abs() * a).sum(dim=1))
    >>> _ = register_method(absolute)
    >>> "abs-cam" in METHODS
    True
    >>> unregister_method("abs-cam")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from seghirescam.cam.method_info import METHOD_INFO, MethodInfo

__all__ = ["CAMMethod", "METHODS", "resolve_method", "resolve_methods", "seg_xres_cam", "register_method",
           "unregister_method"]

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)  # no kw_only: Python 3.9 (Slicer 5.8) lacks it
class CAMMethod(MethodInfo):
    """A CAM method: its metadata (``MethodInfo``: key, display_name, short_title, style, citation,
    description; ``name`` is the key) and its formula.

    Attributes:
        combine: (A, G) -> pre-ReLU map, (B, K, h, w) x 2 -> (B, h, w).
    """

    combine: Combine

    @classmethod
    def from_info(cls, info: MethodInfo, combine: Combine) -> CAMMethod:
        """Join registered metadata with its formula.

        Args:
            info: The metadata.
            combine: The formula.

        Returns:
            The method.
        """
        return cls(key=info.key, display_name=info.display_name, short_title=info.short_title, style=info.style,
                   citation=info.citation, description=info.description, combine=combine)


def _seg_grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-Grad CAM (Vinogradova et al.): channel weights are the mean of the gradient over all spatial axes."""
    alpha = gradients.mean(dim=tuple(range(2, gradients.ndim)), keepdim=True)
    return (alpha * activations).sum(dim=1)


def _seg_hires_grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-HiRes-Grad CAM (Rheude et al.): element-wise gradient times activation."""
    return (gradients * activations).sum(dim=1)


def seg_xres_cam(pool: int = 2, reduce: str = "max") -> CAMMethod:
    """Seg-XRes CAM (Hasany et al. 2023): the gradient pooled over pool x pool (x pool) windows.

    The pooled gradient is upsampled (nearest) back to h x w and multiplied element-wise
    with the activations. Windows at the border may be partial (ceil mode).

    Args:
        pool: Window size p (>= 1). p = 1 equals Seg-HiRes-Grad CAM.
        reduce: "max" or "mean" over each window.

    Returns:
        The method: the registered "seg-xres-cam" for the defaults, otherwise keyed
        "seg-xres-cam-p{pool}-{reduce}" (so differently configured runs never share a key) with
        derived titles, e.g. "Seg-XRes CAM (p=3, mean)" / "Seg-XRes p3 mean", and a dashed line.

    Raises:
        ValueError: If pool < 1 or reduce is not "max" or "mean".
    """
    if int(pool) != pool or pool < 1:
        raise ValueError(f"seg-xres-cam pool must be a positive int, got {pool!r}")
    if reduce not in ("max", "mean"):
        raise ValueError(f"seg-xres-cam reduce must be 'max' or 'mean', got {reduce!r}")
    pool = int(pool)

    def combine(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        volumetric = gradients.ndim == 5  # (B, K, d, h, w): p x p x p windows
        if reduce == "max":
            pooled = (F.max_pool3d if volumetric else F.max_pool2d)(gradients, pool, ceil_mode=True)
        else:
            # Mean over the valid part of border windows: sum-pool / count-pool.
            pooled = (F.avg_pool3d if volumetric else F.avg_pool2d)(gradients, pool, ceil_mode=True,
                                                                    count_include_pad=False)
        upsampled = pooled
        for axis in range(2, gradients.ndim):
            upsampled = upsampled.repeat_interleave(pool, dim=axis).narrow(axis, 0, gradients.shape[axis])
        return (upsampled * activations).sum(dim=1)

    if (pool, reduce) == (2, "max"):
        return CAMMethod.from_info(METHOD_INFO["seg-xres-cam"], combine)
    return CAMMethod(key=f"seg-xres-cam-p{pool}-{reduce}", display_name=f"Seg-XRes CAM (p={pool}, {reduce})",
                     short_title=f"Seg-XRes p{pool} {reduce}", style=replace(METHOD_INFO["seg-xres-cam"].style,
                                                                              line_style="--"),
                     citation=METHOD_INFO["seg-xres-cam"].citation,
                     description=f"Gradient {reduce}-pooled over {pool}x{pool} windows x activation.",
                     combine=combine)


_FORMULAS: dict[str, Combine] = {"seg-grad-cam": _seg_grad_cam, "seg-hires-grad-cam": _seg_hires_grad_cam,
                                 "seg-xres-cam": seg_xres_cam().combine}

METHODS: dict[str, CAMMethod] = {key: CAMMethod.from_info(METHOD_INFO[key], combine)
                                 for key, combine in _FORMULAS.items()}
"""The registry of runnable methods (key -> method), in registration order; its metadata is mirrored in
``method_info.METHOD_INFO``. Change it only through ``register_method`` / ``unregister_method``."""


def register_method(method: CAMMethod) -> CAMMethod:
    """Add a method to the registry, so every part of the package lists it.

    Args:
        method: The method; its key must be new and must not contain ",".

    Returns:
        The method, so this can be used as ``MY_CAM = register_method(CAMMethod(...))``.

    Raises:
        TypeError: If ``method`` is not a ``CAMMethod``.
        ValueError: If its key is already registered, empty or contains ",".
    """
    if not isinstance(method, CAMMethod):
        raise TypeError(f"register_method takes a CAMMethod, got {type(method).__name__}")
    if not method.key or "," in method.key:
        raise ValueError(f"a method key must be non-empty and contain no ',': {method.key!r}")
    if method.key in METHODS or method.key in METHOD_INFO:
        raise ValueError(f"a CAM method with key {method.key!r} is already registered "
                         f"({METHOD_INFO[method.key].display_name}); unregister it first or choose another key")
    METHODS[method.key] = method
    METHOD_INFO[method.key] = method
    return method


def unregister_method(key: str) -> None:
    """Remove a method from the registry (meant for tests and plug-ins that clean up).

    Args:
        key: A registered method's key.

    Raises:
        ValueError: If no method has this key.
    """
    if key not in METHODS:
        raise ValueError(f"no CAM method {key!r} is registered; known methods: {', '.join(METHODS)}")
    del METHODS[key]
    METHOD_INFO.pop(key, None)


def resolve_method(spec: str | CAMMethod) -> CAMMethod:
    """Turn a method key or a ``CAMMethod`` into a ``CAMMethod``.

    Args:
        spec: A registered key, or a ``CAMMethod`` (registered or not, e.g. ``seg_xres_cam(3, "mean")``).

    Returns:
        The method.

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


def resolve_methods(specs: Sequence[str | CAMMethod]) -> list[CAMMethod]:
    """``resolve_method`` for each, keeping the first of any methods that share a key.

    Args:
        specs: Registered keys and/or ``CAMMethod`` objects.

    Returns:
        The methods, in the given order, one per key.

    Raises:
        ValueError: For an unknown key, or if no method is given.
        TypeError: For anything that is neither a string nor a ``CAMMethod``.
    """
    resolved: dict[str, CAMMethod] = {}
    for spec in specs:
        method = resolve_method(spec)
        resolved.setdefault(method.key, method)
    if not resolved:
        raise ValueError(f"no CAM method given; known methods: {', '.join(METHODS)}")
    return list(resolved.values())
