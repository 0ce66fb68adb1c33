"""Any network, built by a factory function the user names, with weights as data and a model card.

``load_factory_model("package.module:function", weights, card)`` imports the named function (the
user's explicit choice of code to run), calls it with the card's ``architecture.kwargs`` to build
the network, and loads the weights as data: ``.safetensors``, or a ``.pt``/``.pth`` state dict read
with ``torch.load(weights_only=True)``; nothing is unpickled. The card says the classes, the input
channels, the HU window and z-score, the size multiple and, optionally, the layers; without layers
they are found by one forward pass (``network_layers``).

2D networks become a ``LoadedModel`` and are explained slice by slice exactly as the project's own
U-Net (``models.slicewise``: the CT's axial slices in the card's orientation, card preprocessing,
maps back in the CT's (k, j, i) order). 3D factory networks are refused for now: they need a
sliding window and a frame convention the card does not describe; a MONAI bundle describes both.

Arrays: the network maps (B, C, H, W) to logits (B, classes, H, W).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from seghirescam.models.weights import read_state_dict, state_dict_mismatch
from seghirescam.models.card import ModelCard
from seghirescam.models.loading import LoadedModel, _check_io
from seghirescam.models.network_layers import network_layers, spatial_dims_of

__all__ = ["FactoryError", "load_factory_model", "import_factory"]

_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class FactoryError(ValueError):
    """A factory, weights file or card that cannot make an explainable model (the message names which)."""


def import_factory(factory: str) -> Callable[..., nn.Module]:
    """The function a ``"package.module:function"`` string names.

    Raises:
        FactoryError: For a malformed string, a module that cannot be imported, or a name that
            is missing or not callable.
    """
    if not isinstance(factory, str) or not _FACTORY.match(factory):
        raise FactoryError(f"factory must be written 'package.module:function', got {factory!r}")
    module_name, function_name = factory.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise FactoryError(f"factory {factory!r}: module {module_name!r} cannot be imported ({error})") from error
    function = getattr(module, function_name, None)
    if function is None:
        raise FactoryError(f"factory {factory!r}: module {module_name!r} has no function {function_name!r}")
    if not callable(function):
        raise FactoryError(f"factory {factory!r}: {function_name!r} is a {type(function).__name__}, not a function")
    return function


def _load_state(network: nn.Module, state: dict[str, torch.Tensor], path: Path, factory: str) -> None:
    mismatch = state_dict_mismatch(network, state)
    if mismatch:
        raise FactoryError(f"{path} does not fit the network {factory} builds: {mismatch}")
    network.load_state_dict(state)


def _with_layers(card: ModelCard, network: nn.Module) -> ModelCard:
    """The card, with the network's discovered layers when it lists none."""
    if card.layers:
        return card
    size = max(card.size_multiple, 16) * 2
    found = network_layers(network, torch.zeros(1, card.in_channels, size, size))
    return dataclasses.replace(card, layers=found.layers, head_input_layers=found.head_input_layers)


def load_factory_model(factory: str, weights: str | os.PathLike, card: ModelCard | str | os.PathLike) -> LoadedModel:
    """Build a network with a named factory, load its weights as data, and pair it with its card.

    Args:
        factory: ``"package.module:function"``; called as ``function(**card.architecture["kwargs"])``
            (no arguments when the card gives none) and must return an ``nn.Module``.
        weights: ``.safetensors`` or a ``.pt``/``.pth`` state dict.
        card: A ``ModelCard`` or the path of its JSON file.

    Returns:
        A 2D ``LoadedModel`` (an ``ExplainableModel``), network in eval mode on the CPU.

    Raises:
        FactoryError: Bad factory string, missing module or function, a factory that does not
            return a module, weights that are missing, pickled or do not fit, a 3D network.
        CardError: A malformed card, or a network whose input/output disagrees with it.
        FileNotFoundError: A missing card file.
    """
    weights = Path(weights)
    card = card if isinstance(card, ModelCard) else ModelCard.load(card)
    function = import_factory(factory)
    kwargs = card.architecture.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise FactoryError(f"card {card.name!r}: architecture.kwargs must be an object, got {type(kwargs).__name__}")
    try:
        network = function(**kwargs)
    except Exception as error:  # noqa: BLE001 - the user's code may raise anything
        raise FactoryError(f"factory {factory!r} failed when called with the card's kwargs {kwargs}: "
                           f"{type(error).__name__}: {error}") from error
    if not isinstance(network, nn.Module):
        raise FactoryError(f"factory {factory!r} returned a {type(network).__name__}, not a torch.nn.Module")
    dims = int(card.architecture.get("spatial_dims", spatial_dims_of(network)))
    if dims != 2:
        raise FactoryError(f"factory {factory!r} builds a {dims}D network; factory models are explained slice by "
                           "slice and must be 2D for now (package a 3D network as a MONAI bundle)")
    _load_state(network, read_state_dict(weights, FactoryError), weights, factory)
    network.eval()
    _check_io(network, card, weights)
    loaded = LoadedModel(network, _with_layers(card, network), weights)
    loaded.family = f"network from factory {factory}"
    return loaded
