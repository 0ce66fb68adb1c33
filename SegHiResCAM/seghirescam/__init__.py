"""SegHiResCAM: Seg-HiRes-Grad CAM and related CAMs for segmentation networks.

The public API; the Slicer module and the command line are built on these names. Names are
imported on first use (PEP 562), so ``import seghirescam`` and ``seghirescam --help`` stay fast
and import no torch.
"""

from __future__ import annotations

from seghirescam.lazy import lazy_exports

__version__ = "0.2.0"

_EXPORTS = {
    "explain_volume": "seghirescam.cam.engine",
    "explain_slices": "seghirescam.cam.engine",
    "DEFAULT_METHODS": "seghirescam.cam.engine",
    "ExplanationResult": "seghirescam.cam.result",
    "ExplanationCancelled": "seghirescam.cam.result",
    "METHODS": "seghirescam.cam.methods",
    "CAMMethod": "seghirescam.cam.methods",
    "seg_xres_cam": "seghirescam.cam.methods",
    "register_method": "seghirescam.cam.methods",
    "unregister_method": "seghirescam.cam.methods",
    "predict_volume": "seghirescam.cam.inference",
    "pixel_set_from_labels": "seghirescam.cam.pixel_sets",
    "pixel_set_from_prediction": "seghirescam.cam.pixel_sets",
    "pixel_set_whole_slices": "seghirescam.cam.pixel_sets",
    "pixel_set_from_points": "seghirescam.cam.pixel_sets",
    "UNet2D": "seghirescam.models.unet",
    "explainable_layers": "seghirescam.cam.layers",
    "head_input_layers": "seghirescam.models.unet",
    "explain_ct": "seghirescam.ct.pipeline",
    "read_volume": "seghirescam.imaging.volumes",
    "load_default_model": "seghirescam.models.loading",
    "load_model": "seghirescam.models.loading",
    "load_explainable_model": "seghirescam.models.explainable",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports('seghirescam', _EXPORTS, globals())
