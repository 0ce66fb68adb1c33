"""The Slicer side of SegHiResCAM (needs Slicer's MRML; no qt): the Logic, click to explain, nodes, display, rendering.

``from seghirescam.mrml import SegHiResCAMLogic`` works inside Slicer and with PyPI's slicer-core.
Names are imported on first use: importing a submodule (e.g. ``mrml.parameters``) imports no torch.
"""

from __future__ import annotations

from seghirescam.lazy import lazy_exports

_EXPORTS = {"SegHiResCAMLogic": "seghirescam.mrml.logic", "ClickExplainLogic": "seghirescam.mrml.click",
            "renderSliceView": "seghirescam.mrml.render"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("seghirescam.mrml", _EXPORTS, globals())
