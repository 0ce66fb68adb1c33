"""The Slicer side of SegHiResCAM (needs Slicer's MRML; no qt): the Logic, click to explain, nodes, display, rendering.

``from seghirescam.mrml import SegHiResCAMLogic`` works inside Slicer and with PyPI's slicer-core.
"""

from seghirescam.mrml.click import ClickExplainLogic
from seghirescam.mrml.logic import SegHiResCAMLogic
from seghirescam.mrml.render import renderSliceView

__all__ = ["SegHiResCAMLogic", "ClickExplainLogic", "renderSliceView"]
