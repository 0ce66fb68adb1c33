"""The model card: what a model file is, what it expects and how well it does (JSON, data only).

A card travels beside every model file. It says the architecture, the classes and their
label values, the input normalisation (HU clip, z-score), the size policy, the in-plane
orientation the model was trained in, the training data and the measured Dice.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

__all__ = ["ModelCard", "CardError", "ORIENTATION", "CARD_FORMAT"]

CARD_FORMAT = "seghirescam-model-card/1"
ORIENTATION = ("axial slices (inferior to superior); rows anterior to posterior; "
               "columns patient right to left (radiological view)")
_SYNONYMS = {"tumor": ("tumor", "tumour", "mass", "lesion", "cancer", "carcinoma"),
             "cyst": ("cyst",),
             "kidney": ("kidney", "renal")}


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

    @property
    def num_classes(self) -> int:
        """Number of output channels."""
        return int(self.architecture["num_classes"])

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return int(self.architecture["in_channels"])

    def preprocess(self, slices: torch.Tensor) -> torch.Tensor:
        """Raw HU slices (B, H, W) -> model input (B, in_channels, H, W): clip, z-score, repeat."""
        low, high = self.hu_clip
        x = (slices.float().clamp(low, high) - self.mean) / self.std
        return x[:, None].expand(-1, self.in_channels, -1, -1)

    def class_for_segment(self, segment_name: str) -> int:
        """The class a segment's name asks for: "Left kidney" -> kidney, "Kidney tumour" -> tumor.

        Exact class names win; otherwise synonyms (tumour/mass/lesion, renal, ...) are
        matched as words, left/right/number qualifiers are ignored, and a lesion word
        (tumour, cyst) outranks the organ it sits in ("renal mass" is a tumour).

        Raises:
            ValueError: If no class matches or several equally do (the message lists the classes).
        """
        lowered = [name.lower() for name in self.classes]
        if segment_name.strip().lower() in lowered:
            return lowered.index(segment_name.strip().lower())
        words = set(re.findall(r"[a-z]+", segment_name.lower()))
        hits = {index for index, name in enumerate(lowered)
                if name in words or words & set(_SYNONYMS.get(name, ()))}
        lesions = {index for index in hits if lowered[index] != "kidney"}
        hits = lesions or hits
        if len(hits) != 1:
            reason = "matches no class" if not hits else "matches several classes"
            raise ValueError(f"segment name {segment_name!r} {reason}; choose the target class from "
                             f"{', '.join(self.classes)}")
        return hits.pop()

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
        """Write the card atomically (temporary file, then rename)."""
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(self.to_json() + "\n", encoding="utf-8")
        os.replace(temporary, path)
        return path
