"""Options and helpers shared by the subcommands; light to import (no torch), so ``--help`` is fast.

Heavy modules (torch, the engine, the models) are imported inside the functions that run a
command, never at the top of a ``cli`` module.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from seghirescam.cam.method_info import DEFAULT_METHOD_KEYS, METHOD_INFO
from seghirescam.cam.vocabulary import (DEFAULT_NORMALIZATION, DEFAULT_POINT_RADIUS, DEFAULT_PRECISION, NORMALIZATIONS,
                                        PRECISIONS, help_text)
from seghirescam.cli.method_option import add_method_option

if TYPE_CHECKING:
    from seghirescam.models.explainable import ExplainableModel

__all__ = ["add_model_options", "add_engine_options", "add_point_radius_option", "add_input_options", "add_out_options",
           "load_model_from_args", "engine_options", "point_ijk", "positive_int", "non_negative_int", "positive_float",
           "ProgressBar", "VOLUME_FORMATS"]

VOLUME_FORMATS = (".nrrd", ".nii.gz", ".mha")


def _batch_size(text: str) -> int | str:
    """argparse type of ``--batch-size``: a positive int or "auto"."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value}")
    return value


def _number(kind: type, low: float, what: str):
    """An argparse type: a ``kind`` (int or float) of at least ``low`` (``what`` says which, in the message)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, 1, "a positive integer")
non_negative_int = _number(int, 0, "an integer >= 0")
positive_float = _number(float, 1e-9, "a positive number")


def point_ijk(text: str) -> tuple[int, int, int]:
    """argparse type of ``--point``: "I,J,K", three voxel indices of the CT (file order, as a viewer shows them).

    Returns:
        (i, j, k).

    Raises:
        argparse.ArgumentTypeError: Unless there are exactly three non-negative integers.
    """
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 3 or not all(part.lstrip("-").isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected three voxel indices I,J,K (e.g. 120,85,40), got {text!r}")
    i, j, k = (int(part) for part in parts)
    if min(i, j, k) < 0:
        raise argparse.ArgumentTypeError(f"voxel indices I,J,K count from 0, got {text!r}")
    return i, j, k


def _fold(text: str) -> int | str:
    """argparse type of ``--fold``: "all" or a fold number."""
    if text == "all":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a fold is 'all' or a number, got {text!r}")
    return int(text)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model`` (file or folder), ``--card``, nnU-Net's ``--fold``/``--checkpoint``/``--mirroring``,
    ``--model-factory`` and ``--trust-bundle-code``."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, help="a model file with its card (.safetensors, .pt state dict, "
                       "TorchScript), an nnU-Net v2 results folder (DatasetXXX_Name/TRAINER__PLANS__CONFIG) or a MONAI bundle "
                       "folder (configs/inference.json, models/model.pt); "
                       "default: the shipped kidney U-Net")
    group.add_argument("--card", type=Path, help="model card JSON of a model file (default: <model>.card.json)")
    group.add_argument("--fold", type=_fold, action="append", dest="folds", metavar="FOLD",
                       help="nnU-Net: fold to use, repeatable (several = an ensemble); default: all")
    group.add_argument("--checkpoint", default="checkpoint_final.pth",
                       help="nnU-Net: checkpoint file in each fold folder (default: checkpoint_final.pth)")
    group.add_argument("--mirroring", action="store_true",
                       help="nnU-Net: test-time mirroring in prediction and in the explained target (default: off)")
    group.add_argument("--model-factory", metavar="MODULE:FUNCTION",
                       help="any 2D network: FUNCTION(**card.architecture['kwargs']) builds it (your own code, imported "
                       "by name); --model gives its weights (.safetensors or a weights-only state dict), --card its card")
    group.add_argument("--trust-bundle-code", action="store_true",
                       help="MONAI bundles: allow '$' expressions and other targets in the bundle's config (they run "
                       "Python code; only for bundles you trust)")


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--layer``, ``--device``, ``--batch-size``, ``--normalize``, ``--precision``."""
    add_method_option(parser, default=DEFAULT_METHOD_KEYS)
    parser.add_argument("--layer", action="append", help="layer to explain, repeatable; default: the model's "
                        "default layer (the U-Net's bottleneck, nnU-Net's deepest encoder stage)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N, mps")
    parser.add_argument("--batch-size", type=_batch_size, default="auto",
                        help="slices per batch, or auto (default: auto)")
    parser.add_argument("--normalize", default=DEFAULT_NORMALIZATION, choices=list(NORMALIZATIONS),
                        help=help_text(NORMALIZATIONS))
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=list(PRECISIONS),
                        help=help_text(PRECISIONS) + f" (default: {DEFAULT_PRECISION})")


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """``--allow-irregular-slices`` (DICOM series with missing or unevenly spaced slices)."""
    parser.add_argument("--allow-irregular-slices", action="store_true",
                        help="a DICOM series with missing or unevenly spaced slices is resampled (linear, along the "
                        "slice normal) onto a uniform grid, with a warning, instead of refused")


def add_out_options(parser: argparse.ArgumentParser) -> None:
    """``--out`` (a folder the run owns, ``ct.run_folder``) and ``--overwrite``."""
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder; must be empty or new unless --overwrite (checked before any work)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --out (files of other programs are kept)")


def add_point_radius_option(parser: argparse.ArgumentParser) -> None:
    """``--point-radius`` (default ``DEFAULT_POINT_RADIUS``)."""
    parser.add_argument("--point-radius", type=non_negative_int, default=DEFAULT_POINT_RADIUS,
                        help=f"in-plane disc radius (pixels) around a point, on its own slice; 0: the voxel alone "
                        f"(default: {DEFAULT_POINT_RADIUS})")


def load_model_from_args(args: argparse.Namespace) -> ExplainableModel:
    """The model the options name (``models.explainable.load_explainable_model``)."""
    from seghirescam.models.explainable import load_explainable_model

    if args.model_factory:
        from seghirescam.models.factory import load_factory_model
        from seghirescam.models.loading import card_path_for

        if args.model is None:
            raise ValueError("--model-factory needs --model WEIGHTS (.safetensors or a weights-only .pt)")
        return load_factory_model(args.model_factory, args.model, args.card or card_path_for(args.model))
    return load_explainable_model(args.model, card=args.card, folds=tuple(args.folds or ("all",)),
                                  checkpoint=args.checkpoint, use_mirroring=args.mirroring,
                                  trust_code=args.trust_bundle_code)


def engine_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``ExplainableModel.explain_ct`` from the engine options.

    When a perturbation method (one forward per channel and slice) is chosen, the engine's cost
    estimate, logged at INFO by ``seghirescam.cam.perturbation`` before those forwards start, is let
    through to the terminal.
    """
    methods = tuple(args.method or DEFAULT_METHOD_KEYS)
    if any(METHOD_INFO[key].cost == "perturbation" for key in methods if key in METHOD_INFO):
        logging.getLogger("seghirescam.cam.perturbation").setLevel(logging.INFO)
    options = {"methods": methods, "device": args.device, "batch_size": args.batch_size, "normalize": args.normalize}
    if args.precision != DEFAULT_PRECISION:
        options["autocast"] = args.precision  # passed only when set: models written before the option work
    return options


class ProgressBar:
    """A tqdm bar fed by the engine's progress(done, total) callback.

    Args:
        description: The bar's label.
        unit: What is counted ("slice", "tile").
    """

    def __init__(self, description: str, unit: str = "step") -> None:
        self.description, self.unit, self.bar = description, unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.description, unit=self.unit, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        """Remove the bar from the terminal."""
        if self.bar is not None:
            self.bar.close()
