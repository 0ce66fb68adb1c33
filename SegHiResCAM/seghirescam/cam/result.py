"""What an explanation run returns, and how a cancelled run ends."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ExplanationResult", "ExplanationCancelled"]


class ExplanationCancelled(Exception):
    """Raised when the ``cancel`` callback asks a run to stop; nothing partial is returned."""


@dataclass
class ExplanationResult:
    """Maps of one volume, with how they were made.

    ``result[(method, layer)]`` is a float array in the volume's shape and axis order.

    Attributes:
        maps: ``{(method, layer): array}``.
        scales: Per map, the divisor of each slice (along ``axis``) used by normalization;
            ``map * scale`` gives back the raw values.
        slices_explained: Indices along ``axis`` of the slices that were run.
        slices_skipped: How many slices were not run because their M was empty.
        axis, target_class, normalize, device, batch_size: The settings used.
        seconds: Wall time of the run.
    """

    maps: dict[tuple[str, str], np.ndarray]
    scales: dict[tuple[str, str], np.ndarray]
    slices_explained: tuple[int, ...]
    slices_skipped: int
    axis: int
    target_class: int
    normalize: str
    device: str
    batch_size: int
    seconds: float
    extra: dict = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, str]) -> np.ndarray:
        try:
            return self.maps[key]
        except KeyError:
            raise KeyError(f"no map for {key!r}; available: {sorted(self.maps)}") from None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.maps)

    def keys(self) -> list[tuple[str, str]]:
        """The (method, layer) pairs, in the order they were asked for."""
        return list(self.maps)

    def summary(self) -> dict:
        """JSON-ready metadata (no arrays)."""
        return {
            "slices_explained": len(self.slices_explained),
            "slices_skipped_empty_m": self.slices_skipped,
            "axis": self.axis,
            "target_class": self.target_class,
            "normalize": self.normalize,
            "device": self.device,
            "batch_size": self.batch_size,
            "seconds": round(self.seconds, 3),
            "maps": [f"{method}@{layer}" for method, layer in self.maps],
        }
