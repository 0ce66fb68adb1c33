"""``seghirescam evaluate``: the faithfulness evaluation from the command line, and its output folder.

Writes per_slice.csv, summary.csv, comparisons.csv, evaluation.md, curves_<layer>.png, curves.npz
(the normalized curves, keys "group|method|layer|fill|mode"), sanity.png and run.json (settings,
counts, runtime, the command) into ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from seghirescam.cli.method_option import add_method_option
from seghirescam.evaluation.config import PHANTOM_SEEDS, EvaluationConfig
from seghirescam.imaging.sample_data import real_ct_dir

__all__ = ["register", "run"]

_DEFAULTS = EvaluationConfig()
# option -> (default, help); the command written into the report lists the options that differ.
_DEFAULT_DATA = real_ct_dir()
_OPTIONS = {
    "--phantoms": (len(PHANTOM_SEEDS), "phantoms with tumors (seeds 7001, 7002, ...)"),
    "--slices": (_DEFAULTS.slices_per_target, "slices per target: those with the largest M"),
    "--steps": (_DEFAULTS.steps, "curve steps over 0..100%% of the slice's pixels"),
    "--blur-sigma": (_DEFAULTS.blur_sigma, "sigma (pixels) of the blurred fill"),
    "--dilation": (_DEFAULTS.dilation, "radius (pixels) of 'M dilated' in localisation"),
    "--pixel-set": (_DEFAULTS.pixel_set, "M: 'label' (reference label) or 'prediction' (the model's segmentation)"),
    "--seed": (_DEFAULTS.seed, "seeds tie-breaking, the random map and the randomised weights"),
}


def register(commands: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` on the CLI's subcommands."""
    parser = commands.add_parser("evaluate", help="measure faithfulness: deletion/insertion, localisation, "
                                 "randomisation sanity checks, exactness (CPU, ~10 min)")
    parser.add_argument("--out", type=Path, required=True, help="folder for tables, plots and run.json")
    parser.add_argument("--model", type=Path, default=None, help="model file with its card (default: the shipped one)")
    parser.add_argument("--data", type=Path, default=_DEFAULT_DATA, help="folder of the shared real CT")
    parser.add_argument("--no-real-ct", action="store_true", help="phantoms only")
    parser.add_argument("--layer", action="append", dest="layers", help=f"layer (repeatable; default "
                        f"{' '.join(_DEFAULTS.layers)})")
    add_method_option(parser, default=None, dest="methods")
    parser.add_argument("--no-sanity", action="store_true", help="skip the cascading weight randomisation")
    for option, (default, text) in _OPTIONS.items():
        choices = ("label", "prediction") if option == "--pixel-set" else None
        parser.add_argument(option, type=type(default), default=default, choices=choices,
                            help=f"{text} (default {default})")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (options at their defaults left out)."""
    words = ["seghirescam", "evaluate", "--out", str(args.out)]
    if args.model is not None:
        words += ["--model", str(args.model)]
    if args.data != _DEFAULT_DATA:
        words += ["--data", str(args.data)]
    words += [flag for flag, on in (("--no-real-ct", args.no_real_ct), ("--no-sanity", args.no_sanity)) if on]
    words += [w for layer in args.layers or () for w in ("--layer", layer)]
    words += [w for method in args.methods or () for w in ("--method", method)]
    for option, (default, _) in _OPTIONS.items():
        value = getattr(args, option[2:].replace("-", "_"))
        if value != default:
            words += [option, str(value)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation (``evaluation.command.run_evaluate``) with the command line that reproduces it."""
    from seghirescam.evaluation.command import run_evaluate

    return run_evaluate(args, _command(args))
