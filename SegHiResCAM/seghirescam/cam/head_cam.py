"""Seg-CAM (Zhou et al. 2016): defined only where a linear 1x1-convolution head gives the logits from A.

There the logit map is y_c = sum_k W[c, k] A[k] + b_c, and CAM is the sum of the channel terms,
sum_k W[c, k] A[k] = y_c - b_c (before the ReLU; the same map whatever M is). Elsewhere no linear
read-out of A exists, and the method refuses with a ValueError naming the layer and where CAM
applies. The head is found from one forward of the first slice: a convolution with a 1x1 (x1)
kernel, stride 1 and one group whose output is the model's output and whose input is the output
of the explained layer.

Arrays: A (B, K, *s) -> map (B, *s).
"""

from __future__ import annotations

import torch
from torch import nn

from seghirescam.cam.layer_context import LayerContext

__all__ = ["head_cam", "find_linear_head"]

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_pointwise(module: nn.Module) -> bool:
    return (isinstance(module, _CONVOLUTIONS) and all(k == 1 for k in module.kernel_size)
            and all(s == 1 for s in module.stride) and module.groups == 1)


def find_linear_head(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module | None, list[str]]:
    """The 1x1 convolution that gives the model's logits, and the layers whose output it reads.

    Args:
        model: The network in eval mode.
        x: One input (1, C, *S).

    Returns:
        (head or None, names of the modules whose output is the head's input, shortest first).
    """
    named = {module: name for name, module in model.named_modules() if name}
    produced: dict[int, list[str]] = {}
    kept: list[torch.Tensor] = []  # keeps the tensors alive so their ids stay unique
    heads: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            kept.append(output)
            produced.setdefault(id(output), []).append(named[module])
        if _is_pointwise(module) and inputs and isinstance(inputs[0], torch.Tensor):
            heads.append((module, inputs[0], output))

    handles = [module.register_forward_hook(record) for module in named]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    for module, head_input, head_output in heads:
        if head_output is logits:
            return module, sorted(produced.get(id(head_input), []), key=lambda name: (name.count("."), len(name)))
    return None, []


def head_cam(context: LayerContext) -> torch.Tensor:
    """Seg-CAM's pre-ReLU map sum_k W[c, k] A[k] (B, *s).

    Raises:
        ValueError: If the explained layer does not feed a linear 1x1 head that gives the logits.
    """
    head, feeding = find_linear_head(context.model, context.x[:1])
    if head is None or context.layer not in feeding:
        where = (f"for this model CAM applies at {feeding[0]!r}" if feeding else
                 "this model has no such head (its logits do not come from a 1x1 convolution), so CAM does not apply")
        raise ValueError(f"seg-cam (CAM) needs a linear 1x1-convolution head reading the explained layer directly; "
                         f"layer {context.layer!r} does not feed one: {where}. Choose that layer or another method")
    weights = head.weight[context.target_class].detach().float().flatten()  # (K,)
    a = context.activations
    return (weights.reshape((1, -1) + (1,) * (a.ndim - 2)) * a).sum(dim=1)
