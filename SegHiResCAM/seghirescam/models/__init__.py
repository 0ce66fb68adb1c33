"""Models to explain: the project's U-Net with its card, and safe loading of model files.

``from seghirescam.models import load_default_model`` gives the shipped kidney U-Net.
"""

from seghirescam.models.card import CardError, ModelCard
from seghirescam.models.loading import (LoadedModel, build_unet, card_path_for, default_model_path,
                                        load_default_model, load_model, save_model, unet_card)
from seghirescam.models.unet import UNet2D

__all__ = ["CardError", "ModelCard", "LoadedModel", "build_unet", "card_path_for", "default_model_path",
           "load_default_model", "load_model", "save_model", "unet_card", "UNet2D"]
