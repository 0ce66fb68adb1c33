"""Seg-FullGrad (Srinivas & Fleuret 2019), computed as pytorch-grad-cam's FullGrad, with y_M as the target.

FullGrad = post(|x * dy_M/dx|) + sum over layers l with a bias of sum over channels of
post(|b_l * dy_M/d(output of l)|), where post() min-max normalises each channel map to [0, 1]
((v - min) / (max - min + 1e-7)) and resizes it to the input (bilinear or trilinear, half-pixel
centres). The bias of a batch-norm layer in eval mode is its folded bias b - mean * w / sqrt(var + eps).
Layers: every Conv1d/2d/3d, ConvTranspose1d/2d/3d and BatchNorm1d/2d/3d with a bias (pytorch-grad-cam
1.5.7 takes only Conv2d and BatchNorm2d; FullGrad's completeness, x.dx + sum b.db = y for a piecewise
linear network, needs every bias). The explained layer plays no part: one extra forward and backward
through the whole network give the map.

Arrays: x (B, C, *S) -> map (B, *S) at the input's (padded) resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seghirescam.cam.layer_context import LayerContext, target_scores

__all__ = ["full_grad", "bias_layers", "folded_bias", "fullgrad_terms"]

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def folded_bias(module: nn.Module) -> torch.Tensor:
    """The bias a layer adds per channel (K,): a convolution's bias; a batch-norm's folded bias in eval mode."""
    if isinstance(module, _BATCH_NORMS):
        weight = module.weight if module.weight is not None else torch.ones_like(module.running_var)
        return module.bias - module.running_mean * weight / torch.sqrt(module.running_var + module.eps)
    return module.bias


def bias_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every convolution and batch-norm layer with a bias, in registration order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, _CONVOLUTIONS + _BATCH_NORMS) and module.bias is not None
            and (not isinstance(module, _BATCH_NORMS) or module.running_mean is not None)]


def fullgrad_terms(model: nn.Module, x: torch.Tensor, weights: torch.Tensor,
                   target_class: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """The raw FullGrad terms of y = sum of weights x class-c logits: one forward and one backward.

    Args:
        model: The network in eval mode.
        x: Input (B, C, *S).
        weights: (B, *S).
        target_class: Class c.

    Returns:
        (x * dy/dx (B, C, *S), [b_l * dy/d(output of l) (B, K_l, *s_l) for every call of every bias layer],
        y per batch element (B,)). Before the absolute values: for a piecewise-linear network (ReLU,
        max-pool, convolutions, batch-norm in eval mode) the sum of all their entries is y (completeness).
    """
    layers = bias_layers(model)
    outputs: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [module.register_forward_hook(lambda m, _i, output: outputs.append((m, output))) for _, module in layers]
    try:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            scores = target_scores(model(leaf), weights, target_class)
            gradients = torch.autograd.grad(scores.sum(), [leaf] + [output for _, output in outputs], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    input_term = (leaf * gradients[0]).detach()
    shape = (1, -1) + (1,) * (x.ndim - 2)
    bias_terms = [(folded_bias(module).detach().reshape(shape) * g).detach()
                  for (module, output), g in zip(outputs, gradients[1:]) if g is not None]
    return input_term, bias_terms, scores.detach()


def _normalised_channels(term: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """|term| per channel min-max normalised, resized to ``size``, summed over channels: (B, *size)."""
    values = term.abs().float()
    flat = values.flatten(2)
    low = flat.amin(2).reshape(values.shape[:2] + (1,) * (values.ndim - 2))
    values = values - low
    high = values.flatten(2).amax(2).reshape(low.shape)
    values = values / (high + 1e-7)
    if tuple(values.shape[2:]) != tuple(size):
        values = F.interpolate(values, size=size, mode="trilinear" if len(size) == 3 else "bilinear",
                               align_corners=False)
    return values.sum(dim=1)


def full_grad(context: LayerContext) -> torch.Tensor:
    """Seg-FullGrad map (B, *S) at the input's resolution; slices with an empty M get a zero map."""
    size = tuple(context.x.shape[2:])
    input_term, bias_terms, _scores = fullgrad_terms(context.model, context.x, context.weights, context.target_class)
    total = _normalised_channels(input_term, size)
    for term in bias_terms:
        total = total + _normalised_channels(term, size)
    holding = context.weights.flatten(1).ne(0).any(1)
    return total * holding.reshape((-1,) + (1,) * len(size))
