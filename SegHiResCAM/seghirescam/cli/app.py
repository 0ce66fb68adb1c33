"""The command line: ``seghirescam demo | explain | batch | train | evaluate``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from seghirescam.imaging.sample_data import real_ct_dir

__all__ = ["main"]

DEFAULT_DATA = real_ct_dir()


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train the default kidney/tumour/cyst U-Net (CPU, time-boxed)")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (card beside it)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the shared real CT")
    parser.add_argument("--no-real-ct", action="store_true", help="train on phantoms only")
    parser.add_argument("--steps", type=int, default=1600, help="optimiser steps (reproducible with --seed)")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="stop early past this wall time")
    parser.add_argument("--seed", type=int, default=0)


def _run_train(args: argparse.Namespace) -> int:
    from seghirescam.synthetic.train import train_default_model

    data = None if args.no_real_ct else args.data
    if data is not None and not (data / "example_ct.nii.gz").is_file():
        raise SystemExit(f"the real CT is not in {data}; pass --data DIR or --no-real-ct")
    path = train_default_model(args.out, data, steps=args.steps, max_minutes=args.max_minutes, seed=args.seed)
    print(f"model: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``seghirescam`` console script.

    Returns:
        The process exit code.
    """
    from seghirescam.cli.batch import add_batch, run_batch_command
    from seghirescam.cli.explain import add_demo, add_explain, run_demo, run_explain
    from seghirescam.cli.evaluate import add_evaluate, run_evaluate

    from seghirescam.cam.method_info import registered_methods

    methods = ", ".join(method.display_name for method in registered_methods())
    parser = argparse.ArgumentParser(prog="seghirescam", description=f"Explain segmentation U-Nets with CAM "
                                     f"methods: {methods}.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    add_demo(commands)
    add_explain(commands)
    add_batch(commands)
    _add_train(commands)
    add_evaluate(commands)
    args = parser.parse_args(argv)
    verbose = args.verbose or args.command in ("train", "evaluate")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runners = {"demo": run_demo, "explain": run_explain, "batch": run_batch_command, "train": _run_train,
               "evaluate": run_evaluate}
    try:
        return runners[args.command](args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"seghirescam {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
