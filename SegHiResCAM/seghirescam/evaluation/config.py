"""The settings of an evaluation run and its cases' constants (plain data: no torch, for a fast CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from seghirescam.cam.method_info import method_keys

__all__ = ["EvaluationConfig", "quick_config", "PHANTOM_SEEDS", "PHANTOM_SHAPE", "PHANTOM_SPACING", "REAL_CT_SLAB",
           "REAL_CT_TRAINING_GUARD", "FILLS", "PIXEL_SETS"]

PHANTOM_SEEDS = tuple(range(7001, 7007))  # disjoint from training (1000..1047) and validation (9001..9004)
PHANTOM_SHAPE = (40, 112, 112)
PHANTOM_SPACING = (3.0, 3.0, 5.0)  # (i, j, k) mm
REAL_CT_SLAB = (92, 112)  # the default model's held-out axial slab (synthetic.train.HELD_OUT_SLAB), display order
REAL_CT_TRAINING_GUARD = 5  # slices next to the training slab (0..91) left out: neighbours nearly repeat them
FILLS = ("road", "blur", "mean")  # ROAD noisy linear imputation, Gaussian blur, soft-tissue mean
PIXEL_SETS = ("label", "prediction")


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings of an evaluation run (the defaults are the README's run).

    Attributes:
        layers: What to explain.
        methods: Method keys; default: every registered method at the time the config is made.
        phantoms: Phantoms with tumors (seeds 7001, 7002, ...), two targets each.
        slices_per_target: Phantoms: the slices with the largest M per target.
        real_ct_slices: Real CT: at most this many usable slices per kidney (None: every usable slice).
        steps: Curve steps: fractions 0, 1/steps, ..., 1 of the slice's pixels.
        fills: Fills of the deletion/insertion curves for M = label ("road", "blur", "mean").
        prediction_fills: Fills for M = the model's prediction.
        blur_sigma: Gaussian sigma (pixels) of the blurred fill.
        dilation: Radius (pixels) of "M dilated" for localisation.
        dice_zone: Radius (pixels) around M inside which predicted pixels count for the Dice.
        pixel_sets: M sources evaluated: "label" (reference label), "prediction" (the model's own
            segmentation of the structure, as the paper does).
        seed: Seeds tie-breaking, the random map, ROAD's noise, subsamples, the randomised weights
            and the bootstrap.
        sanity_seeds: Independent cascading randomisations (different weights) per stage.
        sanity_slices: Slices per target (seeded subsample) in the randomisation check.
        expensive_costs: Methods of these registry costs (``MethodInfo.cost``) are run on a subsample; the
            choice reads the registry, not a timing, so the same settings always give the same tables.
        expensive_slices: Slices per target for those methods (seeded subsample).
        sanity_expensive: Run the randomisation check for those methods too (one forward per channel per
            stage and draw: about 30 s per slice on 2 cores; off by default, the report says so).
        curves_at_collapsed: Also draw curves at layers whose maps collapse to the logit map.
        chunk: Slices per forward pass.
    """

    layers: tuple[str, ...] = ("bottleneck", "dec2", "dec1")
    methods: tuple[str, ...] = field(default_factory=method_keys)
    phantoms: int = 4
    slices_per_target: int = 2
    real_ct_slices: int | None = None
    steps: int = 4
    fills: tuple[str, ...] = FILLS
    prediction_fills: tuple[str, ...] = ("road",)
    blur_sigma: float = 8.0
    dilation: int = 3
    dice_zone: int = 10
    pixel_sets: tuple[str, ...] = PIXEL_SETS
    seed: int = 0
    sanity: bool = True
    sanity_seeds: int = 3
    sanity_slices: int = 1
    expensive_costs: tuple[str, ...] = ("perturbation",)
    expensive_slices: int = 1
    sanity_expensive: bool = False
    curves_at_collapsed: bool = False
    chunk: int = 64

    def fills_for(self, pixel_set: str) -> tuple[str, ...]:
        """Returns: the fills used for M from ``pixel_set``."""
        return self.fills if pixel_set == self.pixel_sets[0] else self.prediction_fills


def quick_config(config: EvaluationConfig | None = None) -> EvaluationConfig:
    """The ``--quick`` settings: one slice per target, one phantom, four steps, M = the first pixel set only.

    A smoke check of every method, layer, control and statistic (its CIs rest on a few slices and
    mean little). Measured on 2 cores: 6.9 min with two slices per target, two phantoms and both
    pixel sets; 3.6 min with one slice and one phantom, both pixel sets; so only the first pixel set
    (the reference label by default) is kept.

    Args:
        config: Settings to shrink (default ``EvaluationConfig()``); layers and methods are kept.
    """
    config = config if config is not None else EvaluationConfig()
    return replace(config, phantoms=min(config.phantoms, 1), pixel_sets=config.pixel_sets[:1], slices_per_target=min(config.slices_per_target, 1),
                   real_ct_slices=1, steps=min(config.steps, 4), sanity_slices=1, expensive_slices=1,
                   sanity_seeds=3)
