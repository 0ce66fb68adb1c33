"""Models to explain: the project's U-Net with its card, and safe loading of model files.

``from seghirescam.models import load_default_model`` gives the shipped kidney U-Net. Names are
imported on first use, so torch-free submodules (``models.class_names``) import no torch.
"""

from __future__ import annotations

from seghirescam.lazy import lazy_exports

_EXPORTS = {
    "CardError": "seghirescam.models.card",
    "ModelCard": "seghirescam.models.card",
    **{name: "seghirescam.models.loading" for name in ("LoadedModel", "build_unet", "card_path_for",
                                                      "default_model_path", "load_default_model", "load_model",
                                                      "save_model", "unet_card")},
    "UNet2D": "seghirescam.models.unet",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("seghirescam.models", _EXPORTS, globals())
