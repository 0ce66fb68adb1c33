"""The model card: what a model file is, what it expects and how well it does (JSON, data only).

A card travels beside every model file. It says the architecture, the classes and their
label values, the input normalization (HU clip, z-score), the size policy, the in-plane
orientation the model was trained in, the training data and the measured Dice.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from seghirescam.models.class_names import class_for_segment_name, resolve_target_class

from seghirescam.atomic import write_text_atomic

__all__ = ["ModelCard", "CardError", "ORIENTATION", "CARD_FORMAT"]

CARD_FORMAT = "seghirescam-model-card/1"
ORIENTATION = ("axial slices (inferior to superior); rows anterior to posterior; "
               "columns patient right to left (radiological view)")


class CardError(ValueError):
    """A model card that is malformed or disagrees with its weights."""


@dataclass(frozen=True)
class ModelCard:
    """Metadata of a segmentation model.

    Attributes:
        name: A short identifier.
        architecture: e.g. {"type": "UNet2D", "in_channels": 1, "num_classes": 4, "widths": [..]},
            or {"type": "torchscript", "in_channels": 1, "num_classes": 4}.
        classes: Class names in logit-channel order; channel c has label value c.
        hu_clip: (low, high) HU window applied before scaling.
        mean, std: z-score applied after clipping: (clip(x) - mean) / std.
        size_multiple: Slices are padded (edge values) to a multiple of this; maps always
            come back on the native grid.
        orientation: The in-plane convention the model expects (``ORIENTATION``).
        training: Free-form description of the training data and settings.
        metrics: Measured performance, e.g. {"dice": {...}}.
        layers: Explainable layers in forward order; ``head_input_layers`` feed the head.
        synonyms: Per class name, further words that name it in segment names, e.g.
            {"tumor": ["tumour", "mass", "lesion"], "kidney": ["renal"]}.
        preferred_classes: Classes that win when a segment name matches several, e.g.
            ["tumor", "cyst"]: a "renal mass" is a tumor, not a kidney.
        sliding_window: For 3D networks (``architecture.spatial_dims == 3``): the prediction's
            sliding window, {"patch_size": [s, r, c], "overlap": 0.5, "mode": "gaussian",
            "sigma_scale": 0.125} (``models.volumetric.window_from_card``); empty for 2D models.
    """

    name: str
    architecture: dict
    classes: tuple[str, ...]
    hu_clip: tuple[float, float] = (-200.0, 300.0)
    mean: float = 0.0
    std: float = 1.0
    size_multiple: int = 1
    orientation: str = ORIENTATION
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    head_input_layers: tuple[str, ...] = ()
    synonyms: dict = field(default_factory=dict)
    preferred_classes: tuple[str, ...] = ()
    sliding_window: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        arch = self.architecture
        if not isinstance(arch, dict) or "type" not in arch:
            raise CardError("model card: 'architecture' must be an object with a 'type'")
        for key in ("in_channels", "num_classes"):
            if not isinstance(arch.get(key), int) or arch[key] < 1:
                raise CardError(f"model card: architecture.{key} must be a positive int, got {arch.get(key)!r}")
        if len(self.classes) != arch["num_classes"]:
            raise CardError(f"model card lists {len(self.classes)} classes but the architecture has "
                            f"{arch['num_classes']} outputs")
        if not self.hu_clip[0] < self.hu_clip[1] or not self.std > 0:
            raise CardError(f"model card: need hu_clip low < high and std > 0, got {self.hu_clip}, {self.std}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "hu_clip", tuple(float(v) for v in self.hu_clip))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "head_input_layers", tuple(self.head_input_layers))
        object.__setattr__(self, "preferred_classes", tuple(self.preferred_classes))
        unknown = (set(self.synonyms) | set(self.preferred_classes)) - set(self.classes)
        if unknown:
            raise CardError(f"model card: synonyms/preferred_classes name unknown classes {sorted(unknown)}; "
                            f"classes are {list(self.classes)}")

    @property
    def num_classes(self) -> int:
        """Number of output channels."""
        return int(self.architecture["num_classes"])

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return int(self.architecture["in_channels"])

    def preprocess(self, slices: torch.Tensor) -> torch.Tensor:
        """Raw HU (B, *S) -> model input (B, in_channels, *S): clip, z-score, repeat; S is (H, W) or (d, h, w)."""
        low, high = self.hu_clip
        x = (slices.float().clamp(low, high) - self.mean) / self.std
        return x[:, None].expand(-1, self.in_channels, *x.shape[1:])

    def class_for_segment(self, segment_name: str) -> int:
        """The class a segment's name asks for, by the card's own vocabulary.

        An exact class name wins; otherwise the class names and the card's ``synonyms`` are
        matched as words (so left/right/number qualifiers are ignored), and when several classes
        match, the card's ``preferred_classes`` win (for the default model: "renal mass" is a
        tumor, not a kidney).

        Args:
            segment_name: e.g. "Left kidney", "Kidney tumor".

        Returns:
            The class index.

        Raises:
            ValueError: If no class matches or several equally do (the message lists the classes).
        """
        return class_for_segment_name(self.classes, segment_name, synonyms=self.synonyms,
                                      preferred=self.preferred_classes)

    def resolve_target_class(self, target_class: int | str | None, segment_name: str | None = None) -> int:
        """The class c to explain (``models.class_names.resolve_target_class`` with this card's vocabulary)."""
        return resolve_target_class(self.classes, target_class, segment_name, match=self.class_for_segment)

    def to_json(self) -> str:
        """The card as JSON text (with a format tag)."""
        data = {"format": CARD_FORMAT, **asdict(self)}
        return json.dumps(data, indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        """Build from parsed JSON. Raises CardError for a wrong format or missing fields."""
        if data.get("format") != CARD_FORMAT:
            raise CardError(f"not a SegHiResCAM model card (format {data.get('format')!r}, expected {CARD_FORMAT!r})")
        fields = {k: v for k, v in data.items() if k != "format"}
        unknown = set(fields) - set(cls.__dataclass_fields__)
        missing = {"name", "architecture", "classes"} - set(fields)
        if unknown or missing:
            raise CardError(f"model card: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
        return cls(**fields)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelCard:
        """Read a card file. Raises FileNotFoundError or CardError naming the path."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model card not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as error:
            raise CardError(f"model card {path} is not valid: {error}") from error
        except CardError as error:
            raise CardError(f"{path}: {error}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the card atomically (``seghirescam.atomic``)."""
        return write_text_atomic(path, self.to_json() + "\n")
