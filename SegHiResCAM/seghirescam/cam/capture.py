"""Forward hooks that keep the activations of the explained layers, as context managers.

The capture also cuts the autograd graph below the earliest explained layer: the forward
pass starts with gradients disabled, and the first explained layer to run switches them on
and hands on a detached copy of its output that requires grad. Nothing below that layer is
recorded, so the single backward pass stops there, and no parameter gradient is computed
because only the activations are asked for (``torch.autograd.grad(..., inputs=A)``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from seghirescam.cam.layers import explainable_layers

__all__ = ["ActivationCapture", "evaluation_mode", "resolve_layers"]


def resolve_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """Map layer names to the model's submodules.

    Raises:
        ValueError: If no layer is given or a name is not a submodule (the message lists
            the valid names).
        TypeError: If ``layers`` is a bare string or holds non-strings.
    """
    if isinstance(layers, str):
        raise TypeError(f"layers must be a sequence of names, e.g. ({layers!r},), not a string")
    if not layers:
        raise ValueError("at least one layer must be explained")
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError("a TorchScript model runs compiled code, where no hook can read a layer's activations; "
                         "explain the Python model (or give its card the UNet2D architecture so it is rebuilt)")
    modules = dict(model.named_modules())
    resolved = {}
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"layer names must be strings, got {name!r}")
        if not name or name not in modules:
            valid = ", ".join(explainable_layers(model)) or "(the model has no submodules)"
            raise ValueError(f"unknown layer {name!r}; valid layers: {valid}")
        resolved[name] = modules[name]
    return resolved


class ActivationCapture:
    """Context manager: hooks on the explained layers, removed on exit.

    Use around a forward pass run under ``torch.no_grad()``; after it, ``activations[name]``
    is each layer's output (B, K, h, w) or (B, K, d, h, w), part of a graph that starts at the earliest layer.

    Args:
        model: The network.
        layers: Names of the layers to capture (see ``resolve_layers``).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self._modules = resolve_layers(model, layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._versions: dict[str, int] = {}
        self.activations: dict[str, torch.Tensor] = {}

    def __enter__(self) -> ActivationCapture:
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, _traceback: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if isinstance(exc, RuntimeError) and "leaf Variable" in str(exc) and "in-place" in str(exc):
            # The earliest layer's output starts the graph as a leaf; a later in-place op on it (e.g.
            # LeakyReLU(inplace=True) after a norm layer) would overwrite the captured values.
            first = next(iter(self.activations), "?")
            raise ValueError(f"the output of layer {first!r} is modified in place later in the forward pass "
                             "(e.g. an activation with inplace=True); explain a layer whose output is kept, "
                             "such as the block's or stage's output") from exc

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor:
            if name in self.activations:
                raise ValueError(f"layer {name!r} runs more than once per forward pass; explain a layer that runs once")
            if not isinstance(output, torch.Tensor) or output.ndim not in (4, 5):
                kind = type(output).__name__ if not isinstance(output, torch.Tensor) else f"{output.ndim}D tensor"
                raise ValueError(f"layer {name!r} outputs a {kind}; explainable layers output (B, K, h, w) or (B, K, d, h, w) tensors")
            if not self.activations or not output.requires_grad:
                # The earliest layer (or one independent of it): start the graph here.
                torch.set_grad_enabled(True)
                output = output.detach().requires_grad_(True)
            self.activations[name] = output
            self._versions[name] = output._version
            return output

        return hook

    def checked_activations(self) -> dict[str, torch.Tensor]:
        """The captured activations in the order the layers were requested.

        Raises:
            ValueError: If a layer did not run, or its output was changed in place later in
                the forward pass (the captured values would then be wrong).
        """
        result = {}
        for name in self._modules:
            if name not in self.activations:
                raise ValueError(f"layer {name!r} did not run in the forward pass")
            if self.activations[name]._version != self._versions[name]:
                raise ValueError(f"the output of layer {name!r} is modified in place later in the forward pass "
                                 "(e.g. ReLU(inplace=True)); explain a layer whose output is kept")
            result[name] = self.activations[name]
        return result


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the block, then restore each one's flag.

    A model found in training mode (batch-norm on batch statistics, dropout active) would give
    maps that depend on the batch and on chance, so it is explained in eval mode, with a
    ``UserWarning``; the caller's flags are restored on exit, even after an error.
    """
    flags = [(module, module.training) for module in model.modules()]
    if not any(training for _, training in flags):  # already in eval mode: nothing to set or restore
        yield model
        return
    warnings.warn("the model is in training mode; explaining it in eval mode (batch-norm running statistics, "
                  "no dropout) and restoring its mode afterwards", UserWarning, stacklevel=3)
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training
