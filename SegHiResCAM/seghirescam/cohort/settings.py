"""The settings of a cohort run: what ``seghirescam batch`` and the Slicer cohort script explain, and how."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from seghirescam.cam.engine import DEFAULT_METHODS
from seghirescam.cam.pixel_sets import DEFAULT_POINT_RADIUS
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION
from seghirescam.models.loading import LoadedModel, card_path_for, default_model_path, load_model

__all__ = ["BatchSettings"]


@dataclass(frozen=True)
class BatchSettings:
    """Settings of a cohort run (picklable: they travel to Dask workers).

    Attributes:
        model, card: Weights file and card (None: the shipped default / ``<model>.card.json``).
        methods, layers: What to explain (layers None: ``cam.layers.default_layers`` of the card's layers).
        device: "auto", "cpu", "cuda", "cuda:N" ("auto" on a Dask worker: its pinned GPU).
        batch_size: Slices per batch or "auto".
        normalize: A key of ``cam.vocabulary.NORMALIZATIONS``.
        extension: Heatmap file format: ".nrrd", ".nii.gz" or ".mha".
        map_dtype: "float32" or "float16" (maps held in memory; files are float32).
        figure: Whether to write the PNG panel.
        label_names: Label value -> name for segment names (None: the card's classes).
        point_radius: In-plane disc radius (pixels) around a manifest point (``DEFAULT_POINT_RADIUS``).
        model_sha256: Digest of weights and card (filled in by ``run_batch``).
    """

    model: str | None = None
    card: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    layers: tuple[str, ...] | None = None
    device: str = "auto"
    batch_size: int | str = "auto"
    normalize: str = DEFAULT_NORMALIZATION
    extension: str = ".nrrd"
    map_dtype: str = "float32"
    figure: bool = True
    label_names: dict[int, str] | None = field(default=None, hash=False)
    point_radius: int = DEFAULT_POINT_RADIUS
    model_sha256: str = ""

    def model_path(self) -> Path:
        """The weights file (the shipped default when ``model`` is None)."""
        return Path(self.model).resolve() if self.model else default_model_path()

    def card_path(self) -> Path:
        """The card file."""
        return Path(self.card).resolve() if self.card else card_path_for(self.model_path())

    def load_model(self) -> LoadedModel:
        """The model and its card, loaded (once per run, or once per Dask worker)."""
        return load_model(self.model_path(), self.card_path())

    def key_fields(self) -> dict:
        """The settings that change the outputs: all but device and batch size (slices are
        independent in eval mode, so neither changes what is computed)."""
        data = dataclasses.asdict(self)
        for name in ("device", "batch_size", "model", "card", "model_sha256"):
            data.pop(name)
        data["label_names"] = sorted((int(k), v) for k, v in (self.label_names or {}).items())
        return data
