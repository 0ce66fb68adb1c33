"""The CAM engine: methods (one registry), hooks, the one-backward engine, pixel sets, normalisation.

Knows no model family and no file format: a model is an ``nn.Module`` and its layers' names.
"""

from seghirescam.cam.engine import DEFAULT_METHODS, explain_slices, explain_volume
from seghirescam.cam.methods import METHODS, CAMMethod, seg_xres_cam
from seghirescam.cam.result import ExplanationCancelled, ExplanationResult

__all__ = ["DEFAULT_METHODS", "explain_slices", "explain_volume", "METHODS", "CAMMethod", "seg_xres_cam",
           "ExplanationCancelled", "ExplanationResult"]
