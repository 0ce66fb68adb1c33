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
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from seghirescam.cam.deeplift import lift_cam
from seghirescam.cam.fullgrad import full_grad
from seghirescam.cam.head_cam import head_cam
from seghirescam.cam.layer_context import LayerContext
from seghirescam.cam.method_info import METHOD_INFO, MethodInfo
from seghirescam.cam.perturbation import ablation_cam, score_cam

__all__ = ["CAMMethod", "METHODS", "resolve_method", "resolve_methods", "seg_xres_cam", "seg_score_cam",
           "register_method", "unregister_method", "principal_projection", "LayerContext"]

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ModelPass = Callable[[LayerContext], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class CAMMethod(MethodInfo):
    """A CAM method: its metadata (``MethodInfo``: key, display_name, short_title, style, citation,
    description; ``name`` is the key) and its formula.

    A method has exactly one of ``combine`` (a formula of A and G, from the engine's shared forward and
    backward) and ``model_pass`` (a method that runs the network again: it gets a ``LayerContext``).

    Attributes:
        combine: (A, G) -> pre-ReLU map, (B, K, *s) x 2 -> (B, *s).
        model_pass: LayerContext -> pre-ReLU map (B, *s), at layer resolution or at the input's (B, *S).
        stitchable: True if per-tile maps of a sliding-window model may be summed into the volume's map
            (``cam.tiles``); False for methods whose per-tile maps are not parts of one volume map
            (normalised per tile, or relative to the tile's own score).
    """

    combine: Combine | None = None
    model_pass: ModelPass | None = None
    stitchable: bool = True

    def __post_init__(self) -> None:
        if (self.combine is None) == (self.model_pass is None):
            raise ValueError(f"CAM method {self.key!r} needs exactly one of combine (A, G) and model_pass (LayerContext)")

    def compute(self, context: LayerContext) -> torch.Tensor:
        """The pre-ReLU map of one layer: ``combine(A, G)`` or ``model_pass(context)``."""
        if self.combine is not None:
            return self.combine(context.activations, context.gradients)
        return self.model_pass(context)

    @classmethod
    def from_info(cls, info: MethodInfo, combine: Combine | None = None, *, model_pass: ModelPass | None = None,
                  stitchable: bool = True) -> CAMMethod:
        """Join registered metadata with its formula.

        Args:
            info: The metadata.
            combine: The formula of A and G, or None when ``model_pass`` is given.
            model_pass: The method that runs the network again.
            stitchable: See the class attributes.

        Returns:
            The method.
        """
        metadata = {field.name: getattr(info, field.name) for field in fields(MethodInfo)}
        return cls(**metadata, combine=combine, model_pass=model_pass, stitchable=stitchable)


def _seg_grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-Grad CAM (Vinogradova et al.): channel weights are the mean of the gradient over all spatial axes."""
    alpha = gradients.mean(dim=tuple(range(2, gradients.ndim)), keepdim=True)
    return (alpha * activations).sum(dim=1)


def _seg_hires_grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-HiRes-Grad CAM (Rheude et al.): element-wise gradient times activation."""
    return (gradients * activations).sum(dim=1)


def _spatial_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over every axis after K, kept for broadcasting: (B, K, *s) -> (B, K, 1, ...)."""
    return values.sum(dim=tuple(range(2, values.ndim)), keepdim=True)


def _seg_grad_cam_pp(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-Grad CAM++ (Chattopadhyay et al., eq. 19 with the exp-output identity), as pytorch-grad-cam 1.5.7.

    a = G^2 / (2 G^2 + sum_uv(A) G^3 + 1e-6), zero where G = 0; alpha_k = sum_uv ReLU(G) a. The absolute
    eps makes the map depend on the scale of G (|M|, the logits' scale).
    """
    g2 = gradients * gradients
    a = g2 / (2 * g2 + _spatial_sum(activations) * g2 * gradients + 1e-6)
    a = torch.where(gradients != 0, a, torch.zeros_like(a))
    alpha = _spatial_sum(gradients.clamp_min(0) * a)
    return (alpha * activations).sum(dim=1)


def _seg_xgrad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-XGrad CAM (Fu et al.), as pytorch-grad-cam: alpha_k = sum_uv A G / (sum_uv A + 1e-7)."""
    alpha = _spatial_sum(gradients * activations / (_spatial_sum(activations) + 1e-7))
    return (alpha * activations).sum(dim=1)


def _seg_layer_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-Layer CAM (Jiang et al.): ReLU(G) x A, element-wise, summed over channels."""
    return (gradients.clamp_min(0) * activations).sum(dim=1)


def principal_projection(values: torch.Tensor) -> torch.Tensor:
    """Each map's projection on the first principal component of its channels (Eigen-CAM).

    As pytorch-grad-cam's ``get_2d_projection``: the (pixels x K) matrix is centred per channel and
    projected on its first right singular vector (here: the top eigenvector of its K x K scatter
    matrix, in float64). The component's sign is arbitrary; the convention here makes the
    largest-magnitude value positive (|min| > |max| flips it), as pytorch-grad-cam's
    ``get_2d_projection_with_sign_correction`` (Seg-Eigen-CAM, Chung & Ying 2025, eq. 13).

    Args:
        values: (B, K, *s); NaN counts as 0.

    Returns:
        (B, *s) float32.
    """
    flat = torch.nan_to_num(values.double()).flatten(2).transpose(1, 2)  # (B, N, K)
    centred = flat - flat.mean(dim=1, keepdim=True)
    _eigenvalues, vectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)  # ascending
    projection = (centred @ vectors[:, :, -1:])[..., 0]  # (B, N)
    flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
    projection = torch.where(flip[:, None], -projection, projection)
    return projection.reshape(values.shape[:1] + values.shape[2:]).float()


def _seg_eigen_cam(activations: torch.Tensor, _gradients: torch.Tensor) -> torch.Tensor:
    """Seg-Eigen CAM (Muhammad & Yeasin): the first principal component of A; class-agnostic."""
    return principal_projection(activations)


def _seg_eigengrad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Seg-EigenGrad CAM: the first principal component of G x A."""
    return principal_projection(gradients * activations)


def seg_score_cam(weighting: str = "raw") -> CAMMethod:
    """Seg-Score CAM (Wang et al.): channel weights from y_M of the input masked by each channel.

    Args:
        weighting: "raw" (alpha_k = y_M(x * S_k), the registered method: y_M is a logit sum, whose
            scale grows with |M|) or "softmax" (softmax over k of those scores, as pytorch-grad-cam
            1.5.7 computes; with large |M| it picks one channel).

    Returns:
        The registered "seg-score-cam" for "raw", else a variant keyed "seg-score-cam-softmax".

    Raises:
        ValueError: For another weighting.
    """
    if weighting not in ("raw", "softmax"):
        raise ValueError(f"seg-score-cam weighting must be 'raw' or 'softmax', got {weighting!r}")
    info = METHOD_INFO["seg-score-cam"]

    def model_pass(context: LayerContext) -> torch.Tensor:
        return score_cam(context, softmax=weighting == "softmax")

    if weighting == "raw":
        return CAMMethod.from_info(info, model_pass=model_pass, stitchable=False)
    return CAMMethod(key="seg-score-cam-softmax", display_name="Seg-Score CAM (softmax)",
                     short_title="Score softmax", style=replace(info.style, line_style=":"), citation=info.citation,
                     description="Channel weights: softmax over channels of y_M(x * S_k), as pytorch-grad-cam.",
                     cost=info.cost, model_pass=model_pass, stitchable=False)


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
                                 "seg-xres-cam": seg_xres_cam().combine, "seg-grad-cam-pp": _seg_grad_cam_pp,
                                 "seg-xgrad-cam": _seg_xgrad_cam, "seg-layer-cam": _seg_layer_cam,
                                 "seg-eigen-cam": _seg_eigen_cam, "seg-eigengrad-cam": _seg_eigengrad_cam}
# Methods that run the network again; stitchable: whether per-tile maps add up to the volume's map.
_MODEL_PASSES: dict[str, tuple[ModelPass, bool]] = {"seg-cam": (head_cam, False), "seg-ablation-cam": (ablation_cam, False),
                                                    "seg-score-cam": (seg_score_cam().model_pass, False),
                                                    "seg-fullgrad": (full_grad, False), "seg-lift-cam": (lift_cam, True)}

METHODS: dict[str, CAMMethod] = {
    key: (CAMMethod.from_info(METHOD_INFO[key], _FORMULAS[key]) if key in _FORMULAS else
          CAMMethod.from_info(METHOD_INFO[key], model_pass=_MODEL_PASSES[key][0], stitchable=_MODEL_PASSES[key][1]))
    for key in METHOD_INFO}
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
