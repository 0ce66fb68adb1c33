"""The ``seghirescam`` command line; each subcommand lives in its own module, imported when used."""

from seghirescam.cli.app import main

__all__ = ["main"]
