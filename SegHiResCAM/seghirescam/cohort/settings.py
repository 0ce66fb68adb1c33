"""The settings of a cohort run: what ``seghirescam batch`` and the Slicer cohort script explain, and how."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from seghirescam.cam.method_info import DEFAULT_METHOD_KEYS
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION, DEFAULT_POINT_RADIUS, DEFAULT_PRECISION
from seghirescam.models.explainable import ExplainableModel, load_explainable_model
from seghirescam.models.loading import card_path_for, default_model_path

__all__ = ["BatchSettings"]


@dataclass(frozen=True)
class BatchSettings:
    """Settings of a cohort run (picklable: they travel to Dask workers).

    Attributes:
        model, card: A model file and its card (None: the shipped default / ``<model>.card.json``), or an
            nnU-Net v2 results folder (no card).
        folds, checkpoint, mirroring: nnU-Net options (``models.explainable.load_explainable_model``).
        methods, layers: What to explain (layers None: ``cam.layers.default_layers`` of the card's layers).
        device: "auto", "cpu", "cuda", "cuda:N" ("auto" on a Dask worker: its pinned GPU).
        batch_size: Slices per batch or "auto".
        normalize: A key of ``cam.vocabulary.NORMALIZATIONS``.
        extension: Heatmap file format: ".nrrd", ".nii.gz" or ".mha".
        map_dtype: "float32" or "float16" (maps held in memory; files are float32).
        precision: A key of ``cam.vocabulary.PRECISIONS``: "fp32" (exact, default) or "bf16" (approximate preview).
        figure: Whether to write the PNG panel.
        label_names: Label value -> name for segment names (None: the card's classes).
        point_radius: In-plane disc radius (pixels) around a manifest point (``DEFAULT_POINT_RADIUS``).
        allow_irregular_slices: Resample DICOM series with missing or uneven slices onto a uniform
            grid instead of failing the case (``imaging.dicom_series``).
        model_sha256: Digest of weights and card (filled in by ``run_batch``).
    """

    model: str | None = None
    card: str | None = None
    folds: tuple[int | str, ...] = ("all",)
    checkpoint: str = "checkpoint_final.pth"
    mirroring: bool = False
    methods: tuple[str, ...] = DEFAULT_METHOD_KEYS
    layers: tuple[str, ...] | None = None
    device: str = "auto"
    batch_size: int | str = "auto"
    normalize: str = DEFAULT_NORMALIZATION
    extension: str = ".nrrd"
    map_dtype: str = "float32"
    precision: str = DEFAULT_PRECISION
    figure: bool = True
    label_names: dict[int, str] | None = field(default=None, hash=False)
    point_radius: int = DEFAULT_POINT_RADIUS
    allow_irregular_slices: bool = False
    model_sha256: str = ""

    def model_path(self) -> Path:
        """The model file or folder (the shipped default when ``model`` is None)."""
        return Path(self.model).resolve() if self.model else default_model_path()

    def card_path(self) -> Path | None:
        """The card file of a model file; None for a model folder (nnU-Net), which carries its own metadata."""
        if self.model_path().is_dir():
            return None
        return Path(self.card).resolve() if self.card else card_path_for(self.model_path())

    def load_model(self) -> ExplainableModel:
        """The model, loaded (once per run, or once per Dask worker)."""
        return load_explainable_model(self.model_path(), card=self.card_path(), folds=self.folds,
                                      checkpoint=self.checkpoint, use_mirroring=self.mirroring)

    def key_fields(self) -> dict:
        """The settings that change the outputs: all but device and batch size (slices are
        independent in eval mode, so neither changes what is computed)."""
        data = dataclasses.asdict(self)
        for name in ("device", "batch_size", "model", "card", "model_sha256"):
            data.pop(name)
        if not self.allow_irregular_slices:
            data.pop("allow_irregular_slices")  # keys of earlier runs stay valid
        if data["precision"] == DEFAULT_PRECISION:
            data.pop("precision")  # the key of an fp32 run stays what it was before the option existed
        data["label_names"] = sorted((int(k), v) for k, v in (self.label_names or {}).items())
        return data
