"""The explainable layers of any network, found by one forward pass: one name per feature map.

A network built by a library (MONAI, a user's factory) has hundreds of named submodules, many of
which hand on the same tensor (a block, its last conv unit, that unit's in-place activation). One
small forward records every submodule's output; each distinct 4D/5D output tensor produced once
per pass gets one name, the outermost module that returned it ("upcat_1", not
"upcat_1.convs.conv_1.adn.A"); blocks and convolutions are listed, lone norms, activations,
poolings and dropouts are not. The layer feeding a final 1x1 convolution (the segmentation head)
is found from that convolution's input, so its CAMs can be checked against the logits.

Arrays: the example input is (1, C, *patch) with patch 2 or 3 spatial sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["NetworkLayers", "network_layers", "spatial_dims_of"]


@dataclass(frozen=True)
class NetworkLayers:
    """A network's explainable layers.

    Attributes:
        layers: Layer names in forward order (the logits' own module excluded).
        default_layer: The last layer (forward order) at the coarsest resolution: the bottleneck's output.
        head_input_layers: The layer whose output is the input of a final 1x1 convolution
            (empty when the network ends otherwise).
        out_channels: Number of output channels of the network.
    """

    layers: tuple[str, ...]
    default_layer: str
    head_input_layers: tuple[str, ...]
    out_channels: int


def spatial_dims_of(network: nn.Module) -> int:
    """2 or 3: the dimension of the network's first convolution.

    Raises:
        ValueError: If the network has no 2D or 3D convolution.
    """
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            return 2
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            return 3
    raise ValueError(f"{type(network).__name__} has no 2D or 3D convolution: not a segmentation network we can explain")


def _is_block(module: nn.Module) -> bool:
    """A block (a module with submodules) or a convolution; not a norm, activation, pooling or dropout."""
    return any(True for _ in module.children()) or isinstance(module, nn.modules.conv._ConvNd)


def _is_head(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in module.kernel_size)


def network_layers(network: nn.Module, example: torch.Tensor) -> NetworkLayers:
    """Discover a network's explainable layers with one forward of ``example``.

    Args:
        network: The network (run in eval mode, its flags restored).
        example: A (1, C, *patch) input the network accepts.

    Returns:
        The layers, the default layer, the head-input layer and the number of outputs.

    Raises:
        ValueError: If the network's output is not a (1, K, *patch') tensor or no layer outputs a
            feature map.
    """
    names = {module: name for name, module in network.named_modules() if name}
    produced: list[tuple[str, torch.Tensor]] = []  # (name, output), in completion order; keeps tensors alive
    counts: dict[str, int] = {}
    head_inputs: dict[str, torch.Tensor] = {}

    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        name = names[module]
        counts[name] = counts.get(name, 0) + 1
        if isinstance(output, torch.Tensor) and output.ndim == example.ndim:
            produced.append((name, output))
        if _is_head(module) and inputs and isinstance(inputs[0], torch.Tensor):
            head_inputs[name] = inputs[0]

    flags = [(module, module.training) for module in network.modules()]
    handles = [module.register_forward_hook(record) for module in names]
    try:
        network.eval()
        with torch.no_grad():
            logits = network(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in flags:
            module.training = training
    if not isinstance(logits, torch.Tensor) or logits.ndim != example.ndim:
        raise ValueError(f"the network must map {tuple(example.shape)} to one logits tensor (1, K, ...), got "
                         f"{type(logits).__name__ if not isinstance(logits, torch.Tensor) else tuple(logits.shape)}")
    groups: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, output in produced:
        groups.setdefault(id(output), []).append(name)
        tensors[id(output)] = output
    outermost = {key: min(group, key=lambda n: (n.count("."), len(n))) for key, group in groups.items()}
    modules = dict(network.named_modules())
    layers = [outermost[key] for key in groups
              if key != id(logits) and all(counts[name] == 1 for name in groups[key])
              and _is_block(modules[outermost[key]])]
    if not layers:
        raise ValueError(f"{type(network).__name__} has no submodule that outputs a feature map once per forward")
    coarsest = min(tensors[key].shape[2:].numel() for key in groups if outermost[key] in layers)
    at_coarsest = [outermost[key] for key in groups
                   if outermost[key] in layers and tensors[key].shape[2:].numel() == coarsest]
    default = at_coarsest[-1]
    head = _head_input_layer(groups, outermost, layers, head_inputs, id(logits))
    return NetworkLayers(tuple(layers), default, head, int(logits.shape[1]))


def _head_input_layer(groups: dict[int, list[str]], outermost: dict[int, str], layers: list[str],
                      head_inputs: dict[str, torch.Tensor], logits_id: int) -> tuple[str, ...]:
    """The layer whose output a final 1x1 convolution turns into the logits, if there is one."""
    heads = [name for name in groups.get(logits_id, []) if name in head_inputs]
    if not heads:
        return ()
    key = id(head_inputs[heads[0]])
    return (outermost[key],) if key in outermost and outermost[key] in layers else ()
