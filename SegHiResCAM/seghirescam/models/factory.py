"""Any network, built by a factory function the user names, with weights as data and a model card.

``load_factory_model("package.module:function", weights, card)`` imports the named function (the
user's explicit choice of code to run), calls it with the card's ``architecture.kwargs`` to build
the network, and loads the weights as data: ``.safetensors``, or a ``.pt``/``.pth`` state dict read
with ``torch.load(weights_only=True)``; nothing is unpickled. The card says the classes, the input
channels, the HU window and z-score, the size multiple and, optionally, the layers; without layers
they are found by one forward pass (``network_layers``).

2D networks become a ``LoadedModel`` and are explained slice by slice exactly as the project's own
U-Net (``models.slicewise``: the CT's axial slices in the card's orientation, card preprocessing,
maps back in the CT's (k, j, i) order). 3D networks (``architecture.spatial_dims`` 3, or found
from their convolutions) become a ``VolumetricCardModel`` (``models.volumetric``): the CT
reoriented into the card's (s, r, c) frame, predicted and explained over the sliding window of the
card's ``sliding_window`` block (MONAI's window: needs ``seghirescam[monai]``).

Arrays: the network maps (B, C, H, W) to logits (B, classes, H, W), or (B, C, d, h, w) to
(B, classes, d, h, w) in 3D.
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
from seghirescam.models.volumetric import VolumetricCardModel, window_from_card

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


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a weights-only ``.pt``/``.pth`` (``models.weights``)."""
    if path.is_file() and path.suffix.lower() not in (".safetensors", ".pt", ".pth"):
        raise FactoryError(f"unsupported weights file {path.name}: use .safetensors or a .pt/.pth state dict")
    return read_state_dict(path, FactoryError)


def _load_state(network: nn.Module, state: dict[str, torch.Tensor], path: Path, factory: str) -> None:
    mismatch = state_dict_mismatch(network, state)
    if mismatch:
        raise FactoryError(f"{path} does not fit the network {factory} builds: {mismatch}")
    network.load_state_dict(state)


def _with_layers(card: ModelCard, network: nn.Module, spatial: tuple[int, ...]) -> ModelCard:
    """The card, with the network's discovered layers (one forward of a (1, C, *spatial) input) when it lists none."""
    if card.layers:
        return card
    found = network_layers(network, torch.zeros(1, card.in_channels, *spatial))
    return dataclasses.replace(card, layers=found.layers, head_input_layers=found.head_input_layers)


def load_factory_model(factory: str, weights: str | os.PathLike,
                       card: ModelCard | str | os.PathLike) -> LoadedModel | VolumetricCardModel:
    """Build a network with a named factory, load its weights as data, and pair it with its card.

    Args:
        factory: ``"package.module:function"``; called as ``function(**card.architecture["kwargs"])``
            (no arguments when the card gives none) and must return an ``nn.Module``.
        weights: ``.safetensors`` or a ``.pt``/``.pth`` state dict.
        card: A ``ModelCard`` or the path of its JSON file.

    Returns:
        An ``ExplainableModel``, network in eval mode on the CPU: a ``LoadedModel`` (2D, slice by
        slice) or a ``VolumetricCardModel`` (3D, sliding window).

    Raises:
        FactoryError: Bad factory string, missing module or function, a factory that does not
            return a module, weights that are missing, pickled or do not fit, a network that is
            neither 2D nor 3D, a 3D network without MONAI.
        CardError: A malformed card (a 3D card without a valid ``sliding_window``), or a network
            whose input/output disagrees with it.
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
    try:
        dims = int(card.architecture.get("spatial_dims") or spatial_dims_of(network))
    except ValueError as error:
        raise FactoryError(f"factory {factory!r}: {error}") from error
    if dims not in (2, 3):
        raise FactoryError(f"factory {factory!r} builds a {dims}D network; only 2D (slice by slice) and 3D "
                           "(sliding window) networks can be explained")
    window = _window_for_3d(card, factory) if dims == 3 else None
    _load_state(network, _read_weights(weights), weights, factory)
    network.eval()
    if window is None:
        spatial = (max(card.size_multiple, 16),) * 2
        _check_io(network, card, weights, spatial)
        loaded = LoadedModel(network, _with_layers(card, network, (2 * spatial[0],) * 2), weights)
        loaded.family = f"network from factory {factory}"
        return loaded
    _check_io(network, card, weights, tuple(window.roi_size))
    volumetric = VolumetricCardModel(network, _with_layers(card, network, tuple(window.roi_size)), weights, window)
    volumetric.family = f"3D network from factory {factory}"
    return volumetric


def _window_for_3d(card: ModelCard, factory: str) -> object:
    """The card's sliding window for a 3D network (checked before the weights are read)."""
    try:
        import monai  # noqa: F401
    except ImportError as error:
        raise FactoryError(f"factory {factory!r} builds a 3D network, predicted with MONAI's sliding window: "
                           "pip install 'seghirescam[monai]'") from error
    return window_from_card(card)
