"""The settings of an evaluation run and its cases' constants (plain data: no torch, for a fast CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from seghirescam.cam.method_info import method_keys

__all__ = ["EvaluationConfig", "PHANTOM_SEEDS", "PHANTOM_SHAPE", "PHANTOM_SPACING", "REAL_CT_SLAB"]

PHANTOM_SEEDS = (7001, 7002, 7003, 7004)  # disjoint from training (1000..1047) and validation (9001..9004)
PHANTOM_SHAPE = (40, 112, 112)
PHANTOM_SPACING = (3.0, 3.0, 5.0)  # (i, j, k) mm
REAL_CT_SLAB = (92, 112)  # the default model's held-out axial slab (train.HELD_OUT_SLAB), display order


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings of an evaluation run (the defaults are the README's run).

    Attributes:
        layers: What to explain.
        methods: Method keys; default: every registered method at the time the config is made.
        slices_per_target: The slices with the largest M, per target.
        steps: Curve steps: fractions 0, 1/steps, ..., 1 of the slice's pixels.
        blur_sigma: Gaussian sigma (pixels) of the blurred fill.
        dilation: Radius (pixels) of "M dilated" for localisation.
        dice_zone: Radius (pixels) around M inside which predicted pixels count for the Dice.
        pixel_set: "label" (M = reference label) or "prediction" (the model's own segmentation of
            the structure: predicted components touching the label).
        seed: Seeds tie-breaking, the random map and the randomised weights.
        sanity: Run the cascading randomisation.
        chunk: Slices per forward pass.
    """

    layers: tuple[str, ...] = ("bottleneck", "dec2", "dec1")
    methods: tuple[str, ...] = field(default_factory=method_keys)
    slices_per_target: int = 4
    steps: int = 10
    blur_sigma: float = 8.0
    dilation: int = 3
    dice_zone: int = 10
    pixel_set: str = "label"
    seed: int = 0
    sanity: bool = True
    chunk: int = 64
