"""The receptive bound of an explained layer: where a map of that layer can be non-zero for a given M.

An element-wise map (Seg-HiRes: sum_k G * A) is zero wherever G = d y_M / d A is zero, i.e. at every
position of the layer from which no path of the network reaches a pixel of M. This module finds
those paths structurally: on a copy of the network whose nonlinearities are removed
(activations -> identity, max pooling -> average pooling, normalisation -> identity, biases -> 0)
and whose weights are made strictly positive, d y_M / d A > 0 exactly where such a path exists (no
cancellation can hide one). The bound is then brought to the image as the engine brings maps
(bilinear upsampling of a coarser layer reaches one layer pixel further, so such a bound is widened
by one before a nearest-neighbour upsampling). A localisation "win" inside a tight bound is architectural: any map
confined there, informative or not, scores well.

Arrays: x (B, C, H, W), m (B, H, W) bool; bounds (B, H, W) bool at image resolution.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from seghirescam.cam.capture import resolve_layers
from seghirescam.cam.padding import pad_slices, size_multiple

__all__ = ["structural_copy", "receptive_bounds"]

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ReLU6, nn.Softplus,
                nn.Mish, nn.Hardswish, nn.CELU, nn.SELU)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm,
          nn.Dropout, nn.Dropout2d, nn.Dropout3d)


def _replacement(module: nn.Module) -> nn.Module | None:
    if isinstance(module, _ACTIVATIONS + _NORMS):
        return nn.Identity()
    if isinstance(module, nn.MaxPool2d):
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode)
    if isinstance(module, nn.MaxPool3d):
        return nn.AvgPool3d(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode)
    return None


def structural_copy(model: nn.Module) -> nn.Module:
    """A linear copy of the model with strictly positive weights and no biases (see the module docstring).

    Functional nonlinearities called inside ``forward`` (``F.relu`` ...) are not replaced; this is
    exact for networks built from modules (the project's U-Net, nnU-Net's and MONAI's networks).

    Returns:
        The copy in eval mode (float64); the model is untouched.
    """
    work = copy.deepcopy(model).eval().double()
    for name, module in list(work.named_modules()):
        for child_name, child in list(module.named_children()):
            replacement = _replacement(child)
            if replacement is not None:
                setattr(module, child_name, replacement)
    with torch.no_grad():
        for parameter_name, parameter in work.named_parameters():
            if parameter_name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.copy_(parameter.abs() + 1e-3)
    return work


def receptive_bounds(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int, layers: Sequence[str],
                     *, structural: nn.Module | None = None) -> dict[str, np.ndarray]:
    """Where each layer's element-wise map can be non-zero, per slice.

    Args:
        model: The network (B, C, H, W) -> logits (left untouched).
        x: Input (B, C, H, W); only its shape matters (the structural copy sees ones).
        m: M (B, H, W) bool.
        target_class: Class c.
        layers: Layer names.
        structural: A ``structural_copy(model)`` to reuse (made if None).

    Returns:
        {layer: (B, H, W) bool}: True where the layer's map can be non-zero after upsampling.
    """
    work = structural if structural is not None else structural_copy(model)
    xp, mp = pad_slices(torch.ones_like(x, dtype=torch.float64), size_multiple(model), m)
    modules = resolve_layers(work, layers)
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            output.retain_grad()
            captured[name] = output
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.enable_grad():
            xp = xp.clone().requires_grad_(True)  # makes every activation part of the graph
            logits = work(xp)
            (logits[:, target_class] * mp.double()).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    height, width = x.shape[-2:]
    bounds = {}
    for name in layers:
        support = (captured[name].grad.abs().sum(1) > 0).numpy()  # (B, h, w)
        same = support.shape[-2:] == tuple(xp.shape[-2:])  # no upsampling at the input's resolution
        widened = support if same else ndimage.binary_dilation(support, structure=np.ones((1, 3, 3), bool))
        up = F.interpolate(torch.from_numpy(widened[:, None].astype(np.float32)), size=xp.shape[-2:], mode="nearest")
        bounds[name] = up[:, 0, :height, :width].numpy() > 0
    return bounds
