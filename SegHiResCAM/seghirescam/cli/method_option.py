"""The ``--method`` option of every subcommand, built from the method registry when the parser is built."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from seghirescam.cam.method_info import registered_methods

__all__ = ["add_method_option"]


def add_method_option(parser: argparse.ArgumentParser, *, default: Sequence[str] | None,
                      dest: str = "method") -> None:
    """Add a repeatable ``--method`` whose choices and help are the methods registered right now.

    Args:
        parser: The subcommand's parser.
        default: The keys used when the option is not given (shown in the help); None: every registered method.
        dest: Attribute name on the parsed namespace.
    """
    methods = registered_methods()
    listed = "; ".join(f"{m.key}: {m.display_name} ({m.citation})" for m in methods)
    default_text = "every registered method" if default is None else " and ".join(default)
    parser.add_argument("--method", action="append", dest=dest, choices=[m.key for m in methods],
                        metavar="METHOD", help=f"CAM method, repeatable; default: {default_text}. Known: "
                        f"{listed}".replace("%", "%%"))  # argparse formats help with %
