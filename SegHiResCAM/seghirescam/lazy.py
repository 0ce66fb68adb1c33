"""Public names imported on first use (PEP 562), so importing a package costs nothing until a name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str],
                 namespace: dict) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for a package whose public names live in submodules.

    Args:
        package: The package's name, for error messages.
        exports: Public name -> the module that defines it.
        namespace: The package's ``globals()``; a name is cached there once imported.

    Returns:
        (``__getattr__``, ``__dir__``) to assign at the package's top level.
    """

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
