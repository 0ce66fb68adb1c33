"""Seg-LIFT CAM (Jung & Oh 2021): channel weights from DeepLIFT contributions against a zero reference.

alpha_k = sum over (u, v) of A[k] * m[k], with m the DeepLIFT multipliers of y_M with respect to A
for the reference A = 0 (the rest of the network, e.g. a U-Net's skip connections, as for x); the
map is ReLU(sum_k alpha_k A[k]). The Rescale rule is applied at every element-wise non-linearity
module after the layer (ReLU, LeakyReLU, ELU, Sigmoid, Tanh, Softplus, GELU, SiLU): its multiplier
is (f(x) - f(x_ref)) / (x - x_ref), the plain gradient where |x - x_ref| < 1e-10 (as captum's
DeepLift). Linear parts (convolutions, batch-norm in eval mode, sums, concatenations) pass
gradients unchanged. Max-pooling after the layer (only for encoder layers of a U-Net) takes the
plain gradient, where captum applies its own max-pool rule. Non-linearities written as functions
(``F.relu``) cannot be seen and are also treated by their gradient. One forward of x and its
reference as a batch of 2B and one backward give the map.

Arrays: x (B, C, *S), A (B, K, *s) -> map (B, *s).
"""

from __future__ import annotations

import torch
from torch import nn

from seghirescam.cam.layer_context import LayerContext, target_scores

__all__ = ["lift_cam", "deeplift_multipliers"]

_ELEMENT_WISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.GELU, nn.SiLU)
_EPS = 1e-10


def _rescale(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: keep the output's values, make its gradient the Rescale multiplier (first half of the batch)."""
    if not isinstance(output, torch.Tensor) or not output.requires_grad:
        return None  # before the explained layer: not part of the graph
    value = inputs[0]
    half = value.shape[0] // 2
    x, x_ref = value[:half], value[half:]
    y, y_ref = output[:half], output[half:]
    delta = (x - x_ref).detach()
    small = delta.abs() < _EPS
    slope = ((y - y_ref).detach() / torch.where(small, torch.ones_like(delta), delta))
    rescaled = y.detach() + (x - x.detach()) * slope
    return torch.cat([torch.where(small, y, rescaled), y_ref])


def deeplift_multipliers(context: LayerContext) -> torch.Tensor:
    """DeepLIFT multipliers of y (per batch element) with respect to A for the reference A = 0: (B, K, *s)."""
    model, a = context.model, context.activations
    modules = dict(model.named_modules())
    leaf = a.detach().clone().requires_grad_(True)

    def replace(_module: nn.Module, _inputs: tuple, _output: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(True)  # the graph starts here, as in the engine's capture
        return torch.cat([leaf, torch.zeros_like(leaf)])

    handles = [modules[context.layer].register_forward_hook(replace)]
    handles += [module.register_forward_hook(_rescale) for module in model.modules() if isinstance(module, _ELEMENT_WISE)]
    try:
        with torch.no_grad():
            logits = model(torch.cat([context.x, context.x]))
            scores = target_scores(logits[:len(a)], context.weights, context.target_class)
        (multipliers,) = torch.autograd.grad(scores.sum(), [leaf], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    return torch.zeros_like(a) if multipliers is None else multipliers.detach()


def lift_cam(context: LayerContext) -> torch.Tensor:
    """Seg-LIFT CAM's pre-ReLU map (B, *s): sum_k (sum_uv A[k] m[k]) A[k]."""
    a = context.activations
    contributions = a * deeplift_multipliers(context)
    alpha = contributions.sum(dim=tuple(range(2, a.ndim)), keepdim=True)
    return (alpha * a).sum(dim=1)
