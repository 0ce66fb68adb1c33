"""Which layers of a network can be explained: named submodules whose output is a feature map.

Model-agnostic: a model may list its own layers (``layer_names``); otherwise one forward pass
finds the submodules that output a (B, K, h, w) or (B, K, d, h, w) tensor once per pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["explainable_layers", "default_layers"]


def default_layers(layers: Sequence[str]) -> tuple[str, ...]:
    """The layer explained when none is chosen: "bottleneck" if listed, else the middle one.

    The one rule of the engine, the CT pipeline, the command line, cohorts and the Slicer
    Logic: the deepest level of a U-Net, where maps explain more than the segmentation itself.

    Args:
        layers: The model's explainable layers in forward order (a model card's ``layers``, or
            ``explainable_layers(model)``).

    Returns:
        One layer name, as a tuple.

    Raises:
        ValueError: If no layer is listed.
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("the model lists no explainable layers; pass layers explicitly (see explainable_layers)")
    return ("bottleneck",) if "bottleneck" in layers else (layers[len(layers) // 2],)


def explainable_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """List the layers of a model whose activations can be explained, in forward order.

    Args:
        model: A model with a ``layer_names`` attribute (the project's U-Net: its named levels
            are returned) or any module.
        example_input: For other models, a (1, C, H, W) or (1, C, D, H, W) input; every submodule whose output
            is a 4D or 5D tensor, produced once per forward, is listed in execution order. Without
            it, all named submodules are listed in registration order.

    Returns:
        Layer names usable as ``layers=`` of the engine.
    """
    if isinstance(getattr(model, "layer_names", None), (list, tuple)):
        return list(model.layer_names)
    names = {module: name for name, module in model.named_modules() if name}
    if example_input is None:
        return list(names.values())
    seen: list[str] = []
    counts: dict[str, int] = {}

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        name = names[module]
        counts[name] = counts.get(name, 0) + 1
        if isinstance(output, torch.Tensor) and output.ndim in (4, 5) and name not in seen:
            seen.append(name)

    handles = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return [name for name in seen if counts[name] == 1]
