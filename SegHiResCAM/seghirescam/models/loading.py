"""Loading models safely: safetensors, state dicts (weights only) and TorchScript, each with a card.

Model files are data, not code: nothing here unpickles an arbitrary object. A pickled
whole-model file is refused, since loading it could run any code its author wrote.
"""

from __future__ import annotations

import os
from importlib import resources
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from seghirescam.atomic import atomic_path
from seghirescam.cam.layers import default_layers
from seghirescam.models.card import CardError, ModelCard
from seghirescam.models.unet import UNet2D, head_input_layers
from seghirescam.models.weights import state_dict_mismatch

__all__ = ["CardModelMixin", "LoadedModel", "load_model", "load_default_model", "save_model", "default_model_path",
           "card_path_for", "build_unet", "unet_card"]

DEFAULT_MODEL_NAME = "kidney_unet_default.safetensors"


class CardModelMixin:
    """What a model with a card says of itself: name, classes, layers and class vocabulary from ``self.card``.

    Used by ``LoadedModel`` (2D) and ``models.volumetric.VolumetricCardModel`` (3D); both have ``card``
    and ``path`` attributes.
    """

    card: ModelCard
    path: Path

    @property
    def name(self) -> str:
        """The card's name and the weights file's."""
        return f"{self.card.name} ({self.path.name})"

    @property
    def source(self) -> Path:
        """The weights file."""
        return self.path

    @property
    def class_names(self) -> tuple[str, ...]:
        """The card's classes, in output-channel order."""
        return tuple(self.card.classes)

    @property
    def layers(self) -> tuple[str, ...]:
        """The card's explainable layers, in forward order."""
        return tuple(self.card.layers)

    @property
    def default_layer(self) -> str:
        """"bottleneck" when listed, else the middle layer (``cam.layers.default_layers``)."""
        return default_layers(self.card.layers)[0]

    @property
    def head_input_layers(self) -> tuple[str, ...]:
        """Layers feeding the 1x1 head (their CAMs collapse to the logit map)."""
        return tuple(self.card.head_input_layers)

    def class_for_segment(self, segment_name: str) -> int:
        """The class a segment's name asks for, by the card's vocabulary."""
        return self.card.class_for_segment(segment_name)


@dataclass
class LoadedModel(CardModelMixin):
    """A 2D model file with its card, explained slice by slice (an ``ExplainableModel``).

    Attributes:
        model: The network in eval mode on the CPU.
        card: Its model card (classes, preprocessing, size policy, layers).
        path: The weights file it came from.
    """

    model: nn.Module
    card: ModelCard
    path: Path
    family = "model file with a card"
    spatial_dims = 2

    def predict_ct(self, ct, *, device: str = "auto", progress=None):
        """The predicted label map, uint8 (k, j, i) on the CT's grid (``models.slicewise``)."""
        from seghirescam.models.slicewise import predict_slicewise

        return predict_slicewise(ct, self, device=device, progress=progress)

    def explain_ct(self, ct, mask, target_class: int, **options):
        """Slice-wise CAMs on the CT's grid; options as ``models.slicewise.explain_slicewise``."""
        from seghirescam.models.slicewise import explain_slicewise

        return explain_slicewise(ct, mask, self, target_class, **options)


def default_model_path() -> Path:
    """Path of the shipped default model: package data in ``seghirescam/models/weights``.

    Found through ``importlib.resources``, so it works from a source checkout, an installed
    wheel and the Slicer extension alike.
    """
    return Path(str(resources.files("seghirescam.models") / "weights" / DEFAULT_MODEL_NAME))


def card_path_for(weights: str | os.PathLike) -> Path:
    """The card that goes with a weights file: same name with the suffix ``.card.json``."""
    weights = Path(weights)
    return weights.with_name(weights.name.split(".")[0] + ".card.json")


def build_unet(card: ModelCard) -> UNet2D:
    """The project's U-Net as the card describes it (random weights)."""
    arch = card.architecture
    return UNet2D(arch["in_channels"], arch["num_classes"], arch["widths"])


def unet_card(model: UNet2D, name: str, classes: tuple[str, ...], **fields: object) -> ModelCard:
    """A card for one of the project's U-Nets; further card fields as keyword arguments."""
    architecture = {"type": "UNet2D", "in_channels": model.in_channels, "num_classes": model.num_classes,
                    "widths": list(model.widths)}
    return ModelCard(name=name, architecture=architecture, classes=classes, size_multiple=model.size_multiple,
                     layers=tuple(model.layer_names), head_input_layers=tuple(head_input_layers(model)), **fields)


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        raise CardError(f"{path.name} does not match its card's architecture {model.__class__.__name__}"
                        f"{tuple(getattr(model, 'widths', ()))}: {mismatch}")


def _check_io(model: nn.Module, card: ModelCard, path: Path, spatial: tuple[int, ...] | None = None) -> None:
    """One small forward: input and output channels must agree with the card.

    Args:
        model: The network.
        card: Its card.
        path: The weights file (named in messages).
        spatial: The probe's spatial size (default: a 2D square of ``max(size_multiple, 16)``).

    Raises:
        CardError: If the network rejects the card's input or its output disagrees with the classes.
    """
    size = max(card.size_multiple, 16)
    spatial = tuple(spatial) if spatial is not None else (size, size)
    probe = (1, card.in_channels, *spatial)
    try:
        with torch.no_grad():
            out = model(torch.zeros(probe))
    except Exception as error:  # noqa: BLE001 - any failure means the card's input is wrong for this model
        raise CardError(f"{path.name} does not accept the card's input {probe}: {error}") from error
    if not isinstance(out, torch.Tensor) or out.ndim != len(probe) or out.shape[1] != card.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        axes = "H, W" if len(spatial) == 2 else "d, h, w"
        raise CardError(f"{path.name} outputs {shape}, but its card says {card.num_classes} classes "
                        f"(expected (1, {card.num_classes}, {axes}))")


def _is_zip_pickle(path: Path) -> bool:
    """True if a torch.save file holds pickled code objects rather than a plain tensor dict."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return False
    except pickle.UnpicklingError:
        return True


def load_model(path: str | os.PathLike, card: ModelCard | str | os.PathLike | None = None) -> LoadedModel:
    """Load a model file with its card, validating one against the other.

    Supported: ``.safetensors`` (the project's U-Net), ``.pt``/``.pth`` holding a state dict
    (read with ``torch.load(weights_only=True)``), and TorchScript (``.ts``, ``.torchscript``,
    or a ``.pt`` that ``torch.jit.load`` reads). A TorchScript file whose card says "UNet2D"
    becomes a ``UNet2D`` with its weights, so its layers can be hooked and explained; other
    TorchScript models can segment but not be explained (compiled code runs no Python hooks).

    Args:
        path: The weights file.
        card: A card, a card path, or None for ``card_path_for(path)``.

    Returns:
        The model in eval mode on the CPU, with its card.

    Raises:
        FileNotFoundError: If the weights or card file is missing.
        CardError: If the card is malformed, or the weights or the model's input/output
            channels disagree with it, or the file is a pickled whole model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    card = card if isinstance(card, ModelCard) else ModelCard.load(card or card_path_for(path))
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        model = _unet_from_state(load_file(str(path)), card, path)
    elif suffix in (".ts", ".torchscript") or (suffix in (".pt", ".pth") and _is_torchscript(path)):
        model = torch.jit.load(str(path), map_location="cpu")
        if card.architecture["type"] == "UNet2D":
            # Python hooks cannot run inside compiled code: rebuild the U-Net from its weights.
            model = _unet_from_state(dict(model.state_dict()), card, path)
    elif suffix in (".pt", ".pth"):
        if _is_zip_pickle(path):
            raise CardError(f"{path.name} is a pickled Python object (e.g. a whole model saved with torch.save(model)); "
                            "loading it could run arbitrary code, so it is refused. Save the weights instead: "
                            "torch.save(model.state_dict(), path), or export TorchScript or safetensors.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CardError(f"{path.name} does not hold a state dict of tensors")
        model = _unet_from_state(state, card, path)
    else:
        raise CardError(f"unsupported model file {path.name}: use .safetensors, a .pt/.pth state dict, or TorchScript")
    model.eval()
    _check_io(model, card, path)
    return LoadedModel(model, card, path)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _unet_from_state(state: dict[str, torch.Tensor], card: ModelCard, path: Path) -> UNet2D:
    if card.architecture["type"] != "UNet2D":
        raise CardError(f"{path.name} holds weights only, so its card must describe a UNet2D, "
                        f"not {card.architecture['type']!r}")
    model = build_unet(card)
    _check_state_dict(model, state, path)
    model.load_state_dict(state)
    return model


def load_default_model() -> LoadedModel:
    """The shipped kidney/tumor/cyst U-Net and its card.

    Raises:
        FileNotFoundError: If the default model is not in the package (a broken install).
    """
    return load_model(default_model_path())


def save_model(model: UNet2D, card: ModelCard, path: str | os.PathLike) -> Path:
    """Write weights as safetensors and the card beside them, each atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(temporary),
                  metadata={"card": card.name})
        os.chmod(temporary, 0o644)  # safetensors creates files readable by the owner only
    card.save(card_path_for(path))
    return path
