"""The Slicer side of SegHiResCAM (needs Slicer's MRML; no qt): the Logic, nodes, display, rendering.

``from seghirescam.mrml import SegHiResCAMLogic`` works inside Slicer and with PyPI's slicer-core.
"""

from seghirescam.mrml.logic import SegHiResCAMLogic
from seghirescam.mrml.render import renderSliceView

__all__ = ["SegHiResCAMLogic", "renderSliceView"]
