"""The CAM engine: methods (one registry), hooks, the one-backward engine, pixel sets, normalization.

Knows no model family and no file format: a model is an ``nn.Module`` and its layers' names.
"""

from __future__ import annotations

from seghirescam.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_METHODS": "seghirescam.cam.engine",
    "explain_slices": "seghirescam.cam.engine",
    "explain_volume": "seghirescam.cam.engine",
    "METHODS": "seghirescam.cam.methods",
    "CAMMethod": "seghirescam.cam.methods",
    "seg_xres_cam": "seghirescam.cam.methods",
    "seg_score_cam": "seghirescam.cam.methods",
    "LayerContext": "seghirescam.cam.layer_context",
    "register_method": "seghirescam.cam.methods",
    "unregister_method": "seghirescam.cam.methods",
    "MethodInfo": "seghirescam.cam.method_info",
    "PlotStyle": "seghirescam.cam.method_info",
    "ExplanationCancelled": "seghirescam.cam.result",
    "ExplanationResult": "seghirescam.cam.result",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports('seghirescam.cam', _EXPORTS, globals())
