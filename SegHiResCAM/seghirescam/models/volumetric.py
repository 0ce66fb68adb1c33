"""3D networks with a model card: volumetric CAMs over a sliding window in the card's orientation.

A 3D network from a factory (``models.factory``) sees the CT the way its card describes: the
CT's voxels reoriented exactly (permutation and flips, no resampling) into the card's
``(s, r, c)`` frame (``imaging.volumes.SliceOrientation``: s inferior to superior, r anterior to
posterior, c patient right to left), at the CT's own spacing, clipped and z-scored by the card.
It predicts with the sliding window of the card's ``sliding_window`` block (patch size, overlap,
constant or Gaussian importance), which is MONAI's sliding window (``models.monai_window``), so
MONAI is needed. Explanations are those of every tiled family (``cam.tiles.explain_tiles``):
y_M is the sum over M of the stitched class-c logits; tiles without M are not run; the maps
come back on the CT's grid by the exact inverse reorientation, voxel for voxel.

Arrays: the CT and M in (k, j, i); the network frame is (C, s, r, c); the network maps
(B, C, d, h, w) to logits (B, classes, d, h, w).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from seghirescam.cam.methods import CAMMethod, resolve_methods
from seghirescam.cam.result import ExplanationResult
from seghirescam.cam.runtime import model_on_device, resolve_device
from seghirescam.cam.tiles import explain_tiles
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION
from seghirescam.imaging.volumes import SliceOrientation, Volume
from seghirescam.models.card import CardError, ModelCard
from seghirescam.models.loading import CardModelMixin
from seghirescam.models.tiled_result import checked_layers, result_on_ct_grid

if TYPE_CHECKING:
    from seghirescam.models.monai_window import Window

__all__ = ["VolumetricCardModel", "window_from_card"]


def window_from_card(card: ModelCard) -> Window:
    """The sliding window a 3D card describes.

    The card's ``sliding_window`` block: ``patch_size`` (3 positive ints, multiples of the card's
    ``size_multiple``), ``overlap`` (0 <= overlap < 1, default 0.5), ``mode`` ("gaussian" (default)
    or "constant"), ``sigma_scale`` (default 0.125).

    Args:
        card: The model card.

    Returns:
        A ``models.monai_window.Window`` over the (s, r, c) frame.

    Raises:
        CardError: A missing or malformed ``sliding_window`` block (the message names the card).
    """
    from seghirescam.models.monai_window import Window

    block = card.sliding_window
    patch = block.get("patch_size") if isinstance(block, dict) else None
    if not (isinstance(patch, (list, tuple)) and len(patch) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in patch)):
        raise CardError(f"model card {card.name!r}: a 3D network needs sliding_window.patch_size, three positive "
                        f"ints (s, r, c) in voxels, got {patch!r}")
    if any(v % card.size_multiple for v in patch):
        raise CardError(f"model card {card.name!r}: sliding_window.patch_size {list(patch)} must be multiples of "
                        f"size_multiple {card.size_multiple}")
    overlap, mode = block.get("overlap", 0.5), block.get("mode", "gaussian")
    sigma = block.get("sigma_scale", 0.125)
    if not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise CardError(f"model card {card.name!r}: sliding_window.overlap must be in [0, 1), got {overlap!r}")
    if mode not in ("gaussian", "constant"):
        raise CardError(f"model card {card.name!r}: sliding_window.mode must be 'gaussian' or 'constant', got {mode!r}")
    if not isinstance(sigma, (int, float)) or sigma <= 0:
        raise CardError(f"model card {card.name!r}: sliding_window.sigma_scale must be > 0, got {sigma!r}")
    return Window(roi_size=tuple(patch), overlap=(float(overlap),) * 3, mode=mode, sigma_scale=float(sigma))


@dataclass
class VolumetricCardModel(CardModelMixin):
    """A 3D network with its card (an ``ExplainableModel`` with ``spatial_dims == 3``).

    Attributes:
        network: The network in eval mode on the CPU.
        card: Its card (classes, HU window and z-score, layers, ``sliding_window``).
        path: The weights file.
        window: The sliding window (``window_from_card``).
    """

    network: nn.Module
    card: ModelCard
    path: Path
    window: Window
    family = "3D network with a card"
    spatial_dims = 3

    def network_input(self, ct: Volume) -> tuple[torch.Tensor, SliceOrientation]:
        """The CT in the network frame.

        Args:
            ct: The CT (HU), (k, j, i) with its geometry.

        Returns:
            (input (C, s, r, c) float32, the orientation that made it).
        """
        orientation = SliceOrientation.from_geometry(ct.geometry)
        frame = torch.from_numpy(np.ascontiguousarray(orientation.to_slices(ct.array), dtype=np.float32))
        return self.card.preprocess(frame[None])[0], orientation

    def _stitched_logits(self, data: torch.Tensor, device: str,
                         progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """Stitched logits (K, s, r, c) of the network input, on the CPU."""
        from seghirescam.models.monai_window import pad_to_window, stitched_logits, window_tiles

        torch_device = resolve_device(device)
        padded, revert = pad_to_window(data, self.window)
        tiles, importance = window_tiles(self.window, tuple(padded.shape[1:]))
        network = model_on_device(self.network, torch_device)
        logits = stitched_logits(network, padded.to(torch_device), tiles, importance, progress)
        return logits[(slice(None), *revert)].cpu()

    def predict_ct(self, ct: Volume, *, device: str = "auto",
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The argmax of the stitched logits, uint8 (k, j, i) on the CT's grid."""
        data, orientation = self.network_input(ct)
        labels = self._stitched_logits(data, device, progress).argmax(0).numpy()
        return np.ascontiguousarray(orientation.from_slices(labels)).astype(np.uint8)

    def explain_ct(self, ct: Volume, mask: np.ndarray, target_class: int, *, layers: Sequence[str] | None = None,
                   methods: Sequence[str | CAMMethod] = ("seg-hires-grad-cam", "seg-grad-cam"),
                   device: str = "auto", batch_size: int | str = "auto", normalize: str = DEFAULT_NORMALIZATION,
                   progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                   map_dtype: np.dtype | type = np.float32) -> ExplanationResult:
        """Volumetric CAMs of y_M, the sum over M of the stitched class-c logits, on the CT's grid.

        Args and Returns as ``ExplainableModel.explain_ct`` (M bool (k, j, i) on the CT's grid; tiles are
        explained one at a time, so ``batch_size`` is accepted for interface parity only); ``extra``
        holds y_M, the exactness sums (``raw_sums``) and the tile counts.

        Raises:
            ValueError: Bad mask, class, layer, normalisation or method; M empty.
        """
        from seghirescam.models.monai_window import pad_to_window, window_tiles

        started = time.perf_counter()
        layers = checked_layers(ct, mask, target_class, self.class_names, layers, self.layers, self.default_layer,
                                normalize)
        method_list = resolve_methods(methods)
        torch_device = resolve_device(device)
        data, orientation = self.network_input(ct)
        padded, revert = pad_to_window(data, self.window)
        mask_net = torch.zeros(padded.shape[1:], dtype=torch.bool)
        mask_net[revert] = torch.from_numpy(np.ascontiguousarray(orientation.to_slices(mask)))
        tiles, importance = window_tiles(self.window, tuple(padded.shape[1:]))
        network = model_on_device(self.network, torch_device)
        explained = explain_tiles(network, padded.to(torch_device), mask_net.to(torch_device), tiles, importance,
                                  int(target_class), layers, method_list, progress=progress, cancel=cancel)
        keys = list(explained.maps)
        back = np.stack([np.ascontiguousarray(orientation.from_slices(explained.maps.pop(key)[revert].cpu().numpy()))
                         for key in keys])
        return result_on_ct_grid(back, keys, ct, mask, target_class, explained, normalize=normalize,
                                 map_dtype=map_dtype, device=str(torch_device), started=started,
                                 extra={"model_family": self.family})
