"""nnU-Net v2 models (optional extra ``seghirescam[nnunet]``): results folders, nnU-Net's own
preprocessing and sliding window, and volumetric or slice-wise CAMs of its stitched prediction.

nnunetv2 is imported only when a folder is loaded; nothing here needs torchvision or timm.
"""

from seghirescam.models.nnunet.folder import NnUNetLoadError, is_nnunet_folder
from seghirescam.models.nnunet.model import NnUNetModel, load_nnunet_model

__all__ = ["NnUNetLoadError", "NnUNetModel", "is_nnunet_folder", "load_nnunet_model"]
