"""``seghirescam train``: train the shipped kidney/tumor/cyst U-Net (CPU, time-boxed, seeded)."""

from __future__ import annotations

import argparse
from pathlib import Path

from seghirescam.cli.common import positive_float, positive_int
from seghirescam.imaging.sample_data import real_ct_dir

__all__ = ["register", "run"]


def register(commands: argparse._SubParsersAction) -> None:
    """Register ``train``."""
    parser = commands.add_parser("train", help="train the default kidney/tumor/cyst U-Net (CPU, time-boxed)")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (card beside it)")
    parser.add_argument("--data", type=Path, default=real_ct_dir(), help="folder of the shared real CT "
                        "(default: $SEGHIRESCAM_DATA/ct-abdomen-totalseg, else ../shared/data beside the checkout)")
    parser.add_argument("--no-real-ct", action="store_true", help="train on phantoms only")
    parser.add_argument("--steps", type=positive_int, default=1600, help="optimiser steps (reproducible with --seed)")
    parser.add_argument("--max-minutes", type=positive_float, default=20.0, help="stop early past this wall time")
    parser.add_argument("--seed", type=int, default=0, help="seeds the phantoms, the lesions, the crops and the "
                        "initial weights (default 0: the shipped model)")


def run(args: argparse.Namespace) -> int:
    """Train and write the model with its card."""
    from seghirescam.synthetic.train import train_default_model

    data = None if args.no_real_ct else args.data
    if data is not None and not (data / "example_ct.nii.gz").is_file():
        raise ValueError(f"the real CT is not in {data}; pass --data DIR or --no-real-ct")
    path = train_default_model(args.out, data, steps=args.steps, max_minutes=args.max_minutes, seed=args.seed)
    print(f"model: {path}")
    return 0
