"""One notion of an explainable model, and one place that knows every model family.

An explainable model takes a CT (a ``Volume``, (k, j, i) array with its geometry) and gives its
prediction or its CAMs on the CT's own grid; how the CT becomes network input (axis order,
orientation, spacing, intensities, slices or sliding-window patches) is the model's business. The
pipeline, the CLI, the cohort runner, the evaluation and the Slicer Logic only use this interface,
so adding a family is one module in ``models/`` and one entry in ``FAMILIES``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from seghirescam.cam.result import ExplanationResult
    from seghirescam.imaging.volumes import Volume

__all__ = ["ExplainableModel", "ModelFamily", "FAMILIES", "load_explainable_model", "family_of"]


@runtime_checkable
class ExplainableModel(Protocol):
    """What the rest of the package needs from a model.

    Attributes:
        name: A short description for records and titles.
        source: The file or folder it was loaded from.
        class_names: Class names in output-channel order.
        spatial_dims: 2 (explained slice by slice) or 3 (volumetric CAMs).
        layers: Explainable layer names, in forward order.
        default_layer: The layer explained when none is chosen.
        head_input_layers: Layers feeding a 1x1 head directly (their CAMs collapse to the logits).
    """

    name: str
    source: Path
    class_names: tuple[str, ...]
    spatial_dims: int
    layers: tuple[str, ...]
    default_layer: str
    head_input_layers: tuple[str, ...]

    def class_for_segment(self, segment_name: str) -> int:
        """The class a segment's name asks for (ValueError listing the classes when unclear)."""

    def predict_ct(self, ct: Volume, *, device: str = "auto",
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The predicted label map, (k, j, i) on the CT's grid."""

    def explain_ct(self, ct: Volume, mask: np.ndarray, target_class: int, *, layers: Sequence[str] | None = None,
                   methods: Sequence[object] = ..., device: str = "auto", batch_size: int | str = "auto",
                   normalize: str = "volume", progress: Callable[[int, int], None] | None = None,
                   cancel: Callable[[], bool] | None = None,
                   map_dtype: np.dtype | type = np.float32, autocast: str | None = None) -> ExplanationResult:
        """CAMs of y_M = sum over M of the class logits, maps (k, j, i) on the CT's grid.

        ``autocast`` ("bf16": an approximate preview) is passed only when set (``ct.pipeline.explain_ct``)."""


@dataclass(frozen=True)
class ModelFamily:
    """A kind of model file or folder and how to load it.

    Attributes:
        name: e.g. "nnU-Net v2 results folder".
        recognises: True for a path of this family (decided from the files, not the name alone).
        load: ``load(path, **options)`` -> an ``ExplainableModel``.
    """

    name: str
    recognises: Callable[[Path], bool]
    load: Callable[..., ExplainableModel]


def _is_nnunet(path: Path) -> bool:
    return path.is_dir() and (path / "plans.json").is_file()


def _load_nnunet(path: Path, *, folds: Sequence[int | str] = ("all",), checkpoint: str = "checkpoint_final.pth",
                 use_mirroring: bool = False, **_ignored: object) -> ExplainableModel:
    from seghirescam.models.nnunet.model import load_nnunet_model

    return load_nnunet_model(path, folds=folds, checkpoint=checkpoint, use_mirroring=use_mirroring)


def _is_monai_bundle(path: Path) -> bool:
    from seghirescam.models.monai_bundle import is_monai_bundle  # MONAI itself is imported only to load one

    return is_monai_bundle(path)


def _load_monai_bundle(path: Path, *, trust_code: bool = False, **_ignored: object) -> ExplainableModel:
    from seghirescam.models.monai_bundle import load_monai_bundle

    return load_monai_bundle(path, trust_code=trust_code)


def _is_model_file(path: Path) -> bool:
    return path.is_file()


def _load_model_file(path: Path, *, card: str | os.PathLike | None = None, **_ignored: object) -> ExplainableModel:
    from seghirescam.models.loading import load_model

    return load_model(path, card)


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily("nnU-Net v2 results folder (plans.json, dataset.json, fold_N/)", _is_nnunet, _load_nnunet),
    ModelFamily("MONAI bundle folder (configs/inference.json, configs/metadata.json, models/model.pt)",
                _is_monai_bundle, _load_monai_bundle),
    ModelFamily("model file with a card (.safetensors, .pt state dict, TorchScript)", _is_model_file,
                _load_model_file),
)


def family_of(path: str | os.PathLike) -> ModelFamily:
    """The family a model path belongs to.

    Raises:
        FileNotFoundError: If the path does not exist.
        ValueError: If no family recognises it (the message lists the families).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    for family in FAMILIES:
        if family.recognises(path):
            return family
    known = "; ".join(family.name for family in FAMILIES)
    raise ValueError(f"{path} is no model SegHiResCAM can load; it loads: {known}")


def load_explainable_model(path: str | os.PathLike | None = None, **options: object) -> ExplainableModel:
    """Load any supported model: a model file with its card, or an nnU-Net v2 results folder.

    Args:
        path: The file or folder; None for the shipped default U-Net.
        **options: Family options: ``card`` (model files), ``folds``, ``checkpoint``,
            ``use_mirroring`` (nnU-Net), ``trust_code`` (MONAI bundles whose config runs code);
            options of other families are ignored.

    Returns:
        The model.

    Raises:
        FileNotFoundError, ValueError: One clear message naming the path and the cause.
    """
    if path is None or str(path) == "":
        from seghirescam.models.loading import load_default_model

        return load_default_model()
    return family_of(path).load(Path(path), **options)
