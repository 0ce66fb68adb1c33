"""SegHiResCAM: Seg-HiRes-Grad CAM and Seg-Grad CAM for segmentation U-Nets.

The public API; the Slicer module and the command line are built on these names.
"""

from .engine import DEFAULT_METHODS, explain_slices, explain_volume
from .inference import predict_volume
from .methods import METHODS, CAMMethod, seg_xres_cam
from .pixelsets import pixel_set_from_labels, pixel_set_from_points, pixel_set_from_prediction, pixel_set_whole_slices
from .result import ExplanationCancelled, ExplanationResult
from .unet import UNet2D, explainable_layers, head_input_layers

__version__ = "0.1.0"

__all__ = [
    "explain_volume", "explain_slices", "ExplanationResult", "ExplanationCancelled", "DEFAULT_METHODS",
    "METHODS", "CAMMethod", "seg_xres_cam", "UNet2D", "explainable_layers", "head_input_layers",
    "predict_volume", "pixel_set_from_labels", "pixel_set_from_prediction", "pixel_set_whole_slices",
    "pixel_set_from_points",
]
