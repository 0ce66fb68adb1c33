"""The work of ``seghirescam evaluate``: build the targets, run the evaluation, write tables, plots and run.json.

A model with a card that is explained slice by slice (the shipped U-Net, model files, factory
models) gets the full evaluation (``runner``). Models that prepare their own input (nnU-Net results
folders, MONAI bundles) are evaluated through the explainable-model interface on the same cases
(``model_level``). The tables, plots and run record are written by ``writing.write_evaluation``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from seghirescam.evaluation.cases import EvalTarget, phantom_targets, real_ct_targets
from seghirescam.evaluation.config import PHANTOM_SEEDS, PHANTOM_SHAPE, PHANTOM_SPACING, EvaluationConfig, quick_config
from seghirescam.evaluation.runner import run_evaluation, tqdm_bar
from seghirescam.evaluation.sanity import randomisation_stages, sanity_stages
from seghirescam.evaluation.writing import write_evaluation

__all__ = ["run_evaluate", "check_arguments", "config_from_args"]


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad settings before the model is loaded.

    Raises:
        FileNotFoundError: If the real CT is missing (unless --no-real-ct).
        ValueError: For settings the evaluation refuses.
    """
    if not args.no_real_ct and not (args.data / "example_ct.nii.gz").is_file():
        raise FileNotFoundError(f"the real CT is not in {args.data}; pass --data DIR or --no-real-ct")
    if args.phantoms < 0 or args.slices < 1 or args.sanity_seeds < 1:
        raise ValueError("--phantoms must be >= 0, --slices and --sanity-seeds >= 1")
    if args.phantoms > 0 and args.phantoms > 50:
        raise ValueError("--phantoms: at most 50")


def config_from_args(args: argparse.Namespace, layers: tuple[str, ...]) -> EvaluationConfig:
    """The settings the options ask for (``--quick`` shrinks them)."""
    pixel_sets = ("label", "prediction") if args.pixel_set == "both" else (args.pixel_set,)
    config = EvaluationConfig(layers=layers, methods=tuple(args.methods or EvaluationConfig().methods),
                              phantoms=args.phantoms, slices_per_target=args.slices, steps=args.steps,
                              blur_sigma=args.blur_sigma, dilation=args.dilation, pixel_sets=pixel_sets,
                              seed=args.seed, sanity=not args.no_sanity, sanity_seeds=args.sanity_seeds)
    return quick_config(config) if args.quick else config


def _targets(args: argparse.Namespace, config: EvaluationConfig) -> list[EvalTarget]:
    seeds = tuple(PHANTOM_SEEDS[0] + i for i in range(config.phantoms))
    targets = phantom_targets(seeds, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)
    if not args.no_real_ct:
        targets += real_ct_targets(args.data)
    if not targets:
        raise ValueError("nothing to evaluate: --phantoms 0 with --no-real-ct")
    return targets


def run_evaluate(args: argparse.Namespace, command: str, model: object) -> int:
    """Run ``seghirescam evaluate`` on a loaded model; prints where the report is.

    Args:
        args: The parsed options.
        command: The command line that reproduces the run.
        model: An explainable model (``models.explainable``), loaded and checked once.

    Raises:
        ValueError: For settings the evaluation refuses or a model without the cases' classes.
    """
    if hasattr(model, "model") and hasattr(model, "card"):  # explained slice by slice on the card's slices
        default_layers = EvaluationConfig().layers if set(EvaluationConfig().layers) <= set(model.layers) \
            else (model.default_layer,)
        config = config_from_args(args, tuple(args.layers or default_layers))
        targets = _targets(args, config)
        missing = {t.class_name for t in targets} - set(model.card.classes)
        if missing:
            targets = [t for t in targets if t.class_name not in missing]
            if not targets:
                raise ValueError(f"the model's classes {model.card.classes} hold none of the cases' structures")
        cache = None if args.no_cache else (args.cache or args.out / "cache")
        done, plan, seconds = run_evaluation(model.model, model.card, targets, config, cache=cache, bar=tqdm_bar)
        stages = [s for s in dict.fromkeys(sanity_stages(randomisation_stages(model.model), config.layers).values())
                  if s]
        record = write_evaluation(args.out, done, config, plan, seconds=seconds, command=command,
                                  model_name=model.name, stages=stages,
                                  notes=[f"Not evaluated: the model has no class {c!r}." for c in sorted(missing)])
    else:
        from seghirescam.evaluation.model_level import run_model_level

        config = config_from_args(args, tuple(args.layers or (model.default_layer,)))
        config = replace(config, sanity=False)
        record = run_model_level(args, command, model, config, _targets)
    print(f"report: {args.out / 'evaluation.md'} ({record['seconds'] / 60:.1f} min)")
    return 0
