"""``seghirescam evaluate``: the faithfulness evaluation from the command line, and its output folder.

Any model ``explain`` takes (a model file with its card, ``--model-factory``, an nnU-Net results folder
with ``--fold``/``--checkpoint``, a MONAI bundle) is loaded and checked once, then evaluated on the
same cases. Writes per_slice.csv, summary.csv, verdicts.csv, comparisons.csv, evaluation.md,
curves_<layer>.png, curves.npz, sanity.png and run.json (settings, counts, runtime, the command,
the methods' plan) into ``--out``; finished cases are cached in ``--out``/cache (``--cache``) so an
interrupted run resumes and a second run reproduces the tables exactly.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from seghirescam.cli.common import add_model_options, load_model_from_args
from seghirescam.cli.method_option import add_method_option
from seghirescam.evaluation.config import EvaluationConfig
from seghirescam.imaging.sample_data import real_ct_dir

__all__ = ["register", "run"]

_DEFAULTS = EvaluationConfig()
# option -> (default, help); the command written into the report lists the options that differ.
_DEFAULT_DATA = real_ct_dir()
_OPTIONS = {
    "--phantoms": (_DEFAULTS.phantoms, "phantoms with tumors (seeds 7001, 7002, ...), two targets each"),
    "--slices": (_DEFAULTS.slices_per_target, "phantoms: slices per target, those with the largest M"),
    "--steps": (_DEFAULTS.steps, "curve steps over 0..100%% of the slice's pixels"),
    "--blur-sigma": (_DEFAULTS.blur_sigma, "sigma (pixels) of the blurred fill"),
    "--dilation": (_DEFAULTS.dilation, "radius (pixels) of 'M dilated' in localisation"),
    "--pixel-set": ("both", "M: 'label' (reference label), 'prediction' (the model's segmentation, as the paper) "
                    "or 'both'"),
    "--seed": (_DEFAULTS.seed, "seeds tie-breaking, the random map, ROAD's noise, subsamples, the randomised "
               "weights and the bootstrap"),
    "--sanity-seeds": (_DEFAULTS.sanity_seeds, "independent weight randomisations per stage"),
}


def register(commands: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` on the CLI's subcommands."""
    parser = commands.add_parser("evaluate", help="measure faithfulness of every registered method: ROAD/blur/mean "
                                 "deletion and insertion, controls and verdicts, receptive bounds, randomisation "
                                 "sanity, exactness (CPU; --quick about 3 min, default under 20 min)")
    parser.add_argument("--out", type=Path, required=True, help="folder for tables, plots, run.json and the cache")
    add_model_options(parser)
    parser.add_argument("--data", type=Path, default=_DEFAULT_DATA, help="folder of the shared real CT")
    parser.add_argument("--no-real-ct", action="store_true", help="phantoms only")
    parser.add_argument("--quick", action="store_true", help="fewer cases, slices and steps, the same measurements")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: OUT/cache)")
    parser.add_argument("--layer", action="append", dest="layers", help=f"layer (repeatable; default "
                        f"{' '.join(_DEFAULTS.layers)} for the shipped U-Net, the model's default layer otherwise)")
    add_method_option(parser, default=None, dest="methods")
    parser.add_argument("--no-sanity", action="store_true", help="skip the cascading weight randomisation")
    for option, (default, text) in _OPTIONS.items():
        choices = ("label", "prediction", "both") if option == "--pixel-set" else None
        parser.add_argument(option, type=type(default), default=default, choices=choices,
                            help=f"{text} (default {default})")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (options at their defaults left out)."""
    words = ["seghirescam", "evaluate", "--out", str(args.out)]
    if args.model is not None:
        words += ["--model", str(args.model)]
    for flag, value in (("--card", args.card), ("--model-factory", args.model_factory)):
        if value:
            words += [flag, str(value)]
    words += [w for fold in args.folds or () for w in ("--fold", str(fold))]
    if args.checkpoint != "checkpoint_final.pth":
        words += ["--checkpoint", args.checkpoint]
    if args.data != _DEFAULT_DATA:
        words += ["--data", str(args.data)]
    words += [flag for flag, on in (("--quick", args.quick), ("--no-real-ct", args.no_real_ct),
                                    ("--no-sanity", args.no_sanity), ("--mirroring", args.mirroring)) if on]
    words += [w for layer in args.layers or () for w in ("--layer", layer)]
    words += [w for method in args.methods or () for w in ("--method", method)]
    for option, (default, _) in _OPTIONS.items():
        value = getattr(args, option[2:].replace("-", "_"))
        if value != default:
            words += [option, str(value)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Load and check the model once, then run the evaluation (``evaluation.command.run_evaluate``)."""
    from seghirescam.evaluation.command import check_arguments, run_evaluate

    check_arguments(args)
    model = load_model_from_args(args)
    return run_evaluate(args, _command(args), model)
