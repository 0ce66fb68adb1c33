"""The command line: ``seghirescam demo | explain | batch | train | evaluate``.

Each subcommand is one module of this package with ``register(commands)`` and ``run(args)``; the
modules import only light things at their top, so ``seghirescam --help`` loads no torch, scipy,
dask or evaluation code, and a subcommand imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "SUBCOMMANDS"]

SUBCOMMANDS = ("demo", "explain", "batch", "train", "evaluate")  # modules seghirescam.cli.<name>
_VERBOSE_BY_DEFAULT = ("train", "evaluate")


def _parser() -> argparse.ArgumentParser:
    from seghirescam.cam.method_info import registered_methods

    methods = ", ".join(method.display_name for method in registered_methods())
    parser = argparse.ArgumentParser(prog="seghirescam", description=f"Explain segmentation networks (the "
                                     f"project's U-Net, nnU-Net v2) with CAM methods: {methods}.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"seghirescam.cli.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``seghirescam`` console script.

    Returns:
        The process exit code: 0 success, 2 bad input (one line on stderr, no traceback), 130 after
        Ctrl-C (no traceback), or the subcommand's own code (``batch``: 1 when a case failed).
    """
    args = _parser().parse_args(argv)
    verbose = args.verbose or args.command in _VERBOSE_BY_DEFAULT
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return importlib.import_module(f"seghirescam.cli.{args.command}").run(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"seghirescam {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the command removed what it had half-written on its way out
        print(f"seghirescam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
