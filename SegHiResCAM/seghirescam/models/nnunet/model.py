"""An nnU-Net v2 model as an explainable model: a CT in, its prediction or its CAMs on the CT's grid.

The CT is seen exactly as nnU-Net sees it (``frames.preprocess``), predicted with nnU-Net's sliding
window (``sliding_window``), and explained with ``cam.tiles``: the target is y_M, the sum over M
of the stitched class-c logits, so the maps explain the prediction nnU-Net makes. For '2d'
configurations the tiles are slices along the configuration's slicing axis (the network sees
(C, a1, a2)); for 3D configurations they are volumetric patches and the maps are volumetric.

Arrays: CT and M in the CT's (k, j, i) order; maps come back in that order on the CT's grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from seghirescam.cam.methods import CAMMethod, resolve_methods
from seghirescam.cam.result import ExplanationResult
from seghirescam.cam.runtime import check_autocast, model_on_device, resolve_device
from seghirescam.cam.tiles import explain_tiles
from seghirescam.imaging.volumes import Volume
from seghirescam.models.class_names import class_for_segment_name
from seghirescam.models.tiled_result import checked_layers, result_on_ct_grid
from seghirescam.models.nnunet.folder import NnUNetNetwork, load_nnunet_folder
from seghirescam.models.nnunet.frames import mask_to_network_frame, network_frame_to_original, preprocess
from seghirescam.models.nnunet.sliding_window import (gaussian_weights, mirror_combinations, pad_to_patch,
                                                      predict_nnunet, sliding_window_slicers)

__all__ = ["NnUNetModel", "load_nnunet_model"]


class NnUNetModel:
    """An nnU-Net v2 results folder, ready to predict and explain CTs.

    Args:
        loaded: The loaded folder (network, plans, folds).
        use_mirroring: Test-time mirroring in prediction and in the explained target (off by
            default, as a fast inference would run it).
        tile_step_size: The sliding window's step as a fraction of the patch (nnU-Net's 0.5).
    """

    family = "nnU-Net v2"

    def __init__(self, loaded: NnUNetNetwork, *, use_mirroring: bool = False, tile_step_size: float = 0.5) -> None:
        self.loaded = loaded
        self.use_mirroring = bool(use_mirroring)
        self.tile_step_size = float(tile_step_size)

    @property
    def network(self) -> torch.nn.Module:
        """The network (first fold's weights)."""
        return self.loaded.network

    @property
    def source(self) -> Path:
        """The results folder."""
        return self.loaded.folder

    @property
    def name(self) -> str:
        """e.g. "Dataset501_Kidney/nnUNetTrainer__nnUNetPlans__3d_fullres, folds all"."""
        folds = ", ".join(str(f) for f in self.loaded.folds)
        return f"{self.loaded.folder.parent.name}/{self.loaded.folder.name}, folds {folds}"

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names from dataset.json, in output-channel order."""
        return tuple(self.loaded.class_names)

    @property
    def spatial_dims(self) -> int:
        """2 for '2d' configurations (slice-wise CAMs), 3 for volumetric ones."""
        return self.loaded.spatial_dims

    @property
    def layers(self) -> tuple[str, ...]:
        """Explainable layers in nnU-Net's naming: encoder stages, then decoder stages."""
        return tuple(self.loaded.layer_names)

    @property
    def default_layer(self) -> str:
        """The deepest encoder stage."""
        return self.loaded.default_layer

    @property
    def head_input_layers(self) -> tuple[str, ...]:
        """The last decoder stage: it feeds the 1x1 segmentation head, so its CAMs collapse to the logits."""
        decoder = [name for name in self.layers if name.startswith("decoder.")]
        return (decoder[-1],) if decoder else ()

    def class_for_segment(self, segment_name: str) -> int:
        """The class a segment's name asks for, matched against dataset.json's label names."""
        return class_for_segment_name(self.class_names, segment_name)

    def _image(self, ct: Volume) -> tuple[np.ndarray, list[float]]:
        """The CT as nnU-Net's SimpleITK reader gives it: (z, y, x) array and (z, y, x) spacing (the array is
        converted to float32 once, by ``frames.image_to_nnunet_array``; no copy here)."""
        return ct.array, list(ct.geometry.spacing[::-1])

    def predict_ct(self, ct: Volume, *, device: str = "auto",
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The label map nnU-Net predicts, (k, j, i) on the CT's grid (CPU; ``device`` is accepted for
        interface parity and the prediction runs on the CPU as nnUNetPredictor does there)."""
        segmentation, _ = predict_nnunet(self.loaded, self._image(ct), use_mirroring=self.use_mirroring,
                                         tile_step_size=self.tile_step_size)
        if progress is not None:
            progress(1, 1)
        return np.ascontiguousarray(segmentation.astype(np.uint8 if segmentation.max() < 256 else np.uint16))

    def explain_ct(self, ct: Volume, mask: np.ndarray, target_class: int, *, layers: Sequence[str] | None = None,
                   methods: Sequence[str | CAMMethod] = ("seg-hires-grad-cam", "seg-grad-cam"),
                   device: str = "auto", batch_size: int | str = "auto", normalize: str = "volume",
                   progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                   map_dtype: np.dtype | type = np.float32, autocast: str | None = None) -> ExplanationResult:
        """CAMs of y_M (M on the CT's grid) for nnU-Net's stitched prediction, on the CT's grid.

        Args:
            ct: The CT (HU) with its geometry.
            mask: M, bool (k, j, i) on the CT's grid.
            target_class: Output channel c (dataset.json's label value order).
            layers: Layer names (default: the deepest encoder stage).
            methods: Registry names or ``CAMMethod`` objects.
            device: "auto", "cpu", "cuda", ...
            batch_size: Accepted for interface parity; tiles are explained one at a time
                (bounded memory).
            normalize: "volume", "slice" (per axial slice) or "none".
            progress: Called as progress(done, total) per tile.
            cancel: Returning True raises ``ExplanationCancelled`` before the next tile.
            map_dtype: dtype of the returned maps.
            autocast: None (float32) or "bf16", an approximate preview (``cam.engine.layer_maps``).

        Returns:
            The result; ``axis`` is the CT's axial axis, ``extra`` holds y_M, the exactness
            sums and the tile counts.

        Raises:
            ValueError: Bad mask, class, layer or method; M empty in nnU-Net's frame.
        """
        started = time.perf_counter()
        layers = checked_layers(ct, mask, target_class, self.class_names, layers, self.layers, self.default_layer,
                                normalize)
        method_list = resolve_methods(methods)
        torch_device = resolve_device(device)
        autocast = check_autocast(torch_device, autocast)  # refused before any work
        prepared = preprocess(self.loaded, self._image(ct))
        mask_net = mask_to_network_frame(self.loaded, prepared, mask)
        data, revert = pad_to_patch(self.loaded, torch.from_numpy(prepared.data))
        mask_padded, _ = pad_to_patch(self.loaded, torch.from_numpy(mask_net[None].astype(np.float32)))
        network = model_on_device(self.loaded.network, torch_device)
        members = [lambda state=state: network.load_state_dict(state) for state in self.loaded.state_dicts]
        try:
            tiles = explain_tiles(network, data.to(torch_device), mask_padded[0].to(torch_device) > 0,
                                  sliding_window_slicers(self.loaded, data.shape[1:], self.tile_step_size),
                                  gaussian_weights(self.loaded), int(target_class), layers, method_list,
                                  members=members, flips=mirror_combinations(self.loaded, self.use_mirroring),
                                  progress=progress, cancel=cancel, autocast=autocast)
        finally:
            if network is self.loaded.network:
                network.load_state_dict(self.loaded.state_dicts[0])
        del data, mask_padded, mask_net  # from here on only nnU-Net's properties of the case are needed
        prepared.data = np.empty((0,), np.float32)
        keys = list(tiles.maps)
        stacked = torch.stack([tiles.maps.pop(key)[tuple(revert[1:])].cpu() for key in keys]).numpy()
        back = network_frame_to_original(self.loaded, prepared, stacked)
        return result_on_ct_grid(back, keys, ct, mask, target_class, tiles, normalize=normalize,
                                 map_dtype=map_dtype, device=str(torch_device), started=started,
                                 extra={"model_family": self.family,
                                        "configuration": self.loaded.configuration_name})


def load_nnunet_model(folder: str | Path, *, folds: Sequence[int | str] = ("all",),
                      checkpoint: str = "checkpoint_final.pth", use_mirroring: bool = False) -> NnUNetModel:
    """Load an nnU-Net v2 results folder as an explainable model.

    Args:
        folder: ``DatasetXXX_Name/TRAINER__PLANS__CONFIG/``.
        folds: Folds to use ("all", or fold numbers: several form an ensemble).
        checkpoint: "checkpoint_final.pth" or "checkpoint_best.pth".
        use_mirroring: Test-time mirroring.

    Raises:
        NnUNetLoadError: One clear message for a bad folder, fold, checkpoint or weights.
    """
    return NnUNetModel(load_nnunet_folder(folder, folds, checkpoint), use_mirroring=use_mirroring)
