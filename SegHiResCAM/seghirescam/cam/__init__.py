"""The CAM engine: methods (one registry), hooks, the one-backward engine, pixel sets, normalisation.

Knows no model family and no file format: a model is an ``nn.Module`` and its layers' names.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_METHODS": "seghirescam.cam.engine",
    "explain_slices": "seghirescam.cam.engine",
    "explain_volume": "seghirescam.cam.engine",
    "METHODS": "seghirescam.cam.methods",
    "CAMMethod": "seghirescam.cam.methods",
    "seg_xres_cam": "seghirescam.cam.methods",
    "register_method": "seghirescam.cam.methods",
    "unregister_method": "seghirescam.cam.methods",
    "MethodInfo": "seghirescam.cam.method_info",
    "PlotStyle": "seghirescam.cam.method_info",
    "ExplanationCancelled": "seghirescam.cam.result",
    "ExplanationResult": "seghirescam.cam.result",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    """Import a public name from its module on first use, so ``seghirescam.cam.method_info`` (the
    registry's metadata) can be imported without torch, e.g. by the Slicer widget before torch is installed."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seghirescam.cam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
