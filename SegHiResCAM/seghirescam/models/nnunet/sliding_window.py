"""nnU-Net's sliding window: tiles, the Gaussian importance map, padding, and prediction.

Arrays: network-frame data (C, a0, a1, a2); tiles are slicers into the padded data, with an
integer slice index on a0 for '2d' configurations. Reproduces ``nnUNetPredictor`` on the CPU,
including its float16 accumulators, so predictions match nnU-Net's bit for bit.
"""

from __future__ import annotations

import itertools
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from seghirescam.models.nnunet.folder import NnUNetNetwork
from seghirescam.models.nnunet.frames import Image, preprocess

__all__ = ["pad_to_patch", "sliding_window_slicers", "gaussian_weights", "mirror_combinations",
           "sliding_window_logits", "predict_nnunet"]

Slicer = Tuple[Union[slice, int], ...]


def pad_to_patch(model: NnUNetNetwork, data: torch.Tensor) -> Tuple[torch.Tensor, Slicer]:
    """Zero-pad (C, a0, a1, a2) data to at least the patch size, as nnUNetPredictor does.

    Args:
        model: the model.
        data: (C, a0, a1, a2) tensor.

    Returns:
        (padded tensor (C, *padded), slicer that reverts the padding).
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    return pad_nd_image(data, model.patch_size, "constant", {"value": 0}, True, None)


def sliding_window_slicers(model: NnUNetNetwork, image_size: Sequence[int],
                           tile_step_size: float = 0.5) -> List[Slicer]:
    """Tiles exactly as ``nnUNetPredictor._internal_get_sliding_window_slicers``.

    For 2d configurations the (a0, a1, a2) volume is tiled slice by slice with 2D tiles:
    slicers are ``(slice(None), d, slice_a1, slice_a2)``; for 3D ``(slice(None), s0, s1, s2)``.

    Args:
        model: the model.
        image_size: padded spatial shape (a0, a1, a2).
        tile_step_size: fraction of the patch size between tiles.

    Returns:
        Slicers into the padded (C, a0, a1, a2) data.
    """
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    patch = model.patch_size
    if len(patch) < len(image_size):
        steps = compute_steps_for_sliding_window(tuple(image_size[1:]), patch, tile_step_size)
        return [(slice(None), d, *[slice(s, s + t) for s, t in zip((sx, sy), patch)])
                for d in range(image_size[0]) for sx in steps[0] for sy in steps[1]]
    steps = compute_steps_for_sliding_window(tuple(image_size), patch, tile_step_size)
    return [(slice(None), *[slice(s, s + t) for s, t in zip((sx, sy, sz), patch)])
            for sx in steps[0] for sy in steps[1] for sz in steps[2]]


def gaussian_weights(model: NnUNetNetwork) -> torch.Tensor:
    """nnU-Net's importance map: ``compute_gaussian(patch, 1/8, value_scaling_factor=10)``, fp16, CPU."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    return compute_gaussian(tuple(model.patch_size), sigma_scale=1. / 8, value_scaling_factor=10,
                            device=torch.device("cpu"))


def mirror_combinations(model: NnUNetNetwork, use_mirroring: bool) -> List[Tuple[int, ...]]:
    """Flip axes (tensor axes of a (1, C, *patch) batch) per test-time mirror, () = identity.

    Same combinations and order as ``nnUNetPredictor._internal_maybe_mirror_and_predict``.
    """
    axes = model.inference_allowed_mirroring_axes if use_mirroring else None
    combos: List[Tuple[int, ...]] = [()]
    if axes:
        if max(axes) > model.spatial_dims - 1:
            raise ValueError("mirror axes do not match the network dimension")
        m = [a + 2 for a in axes]
        combos += [c for i in range(len(m)) for c in itertools.combinations(m, i + 1)]
    return combos


def _predict_patch(network: nn.Module, x: torch.Tensor, combos: List[Tuple[int, ...]]) -> torch.Tensor:
    """Patch logits (1, K, *patch) with optional mirroring, same arithmetic as nnU-Net."""
    pred = network(x)
    for axes in combos[1:]:
        pred += torch.flip(network(torch.flip(x, axes)), axes)
    if len(combos) > 1:
        pred /= len(combos)
    return pred


@torch.inference_mode()
def sliding_window_logits(model: NnUNetNetwork, data: torch.Tensor, tile_step_size: float = 0.5,
                          use_mirroring: bool = False) -> torch.Tensor:
    """Network-frame logits (K, a0, a1, a2) by sliding window, ensemble-averaged over folds.

    Replicates ``nnUNetPredictor.predict_logits_from_preprocessed_data`` /
    ``predict_sliding_window_return_logits`` / ``_internal_predict_sliding_window_return_logits``
    on CPU with use_gaussian=True, including its fp16 accumulators (``predicted_logits``
    and ``n_predictions`` are float16 in nnU-Net), so results match nnU-Net bit for bit.

    Args:
        model: the model.
        data: float32 (C, a0, a1, a2) network-frame tensor.
        tile_step_size: tile overlap parameter (nnU-Net default 0.5).
        use_mirroring: test-time mirroring over the checkpoint's allowed axes.

    Returns:
        float16 logits (K, a0, a1, a2) (nnU-Net's dtype).
    """
    net = model.network.eval()
    combos = mirror_combinations(model, use_mirroring)
    gaussian = gaussian_weights(model)
    padded, revert = pad_to_patch(model, data)
    slicers = sliding_window_slicers(model, padded.shape[1:], tile_step_size)
    n_heads = model.label_manager.num_segmentation_heads
    total = None
    for params in model.state_dicts:
        net.load_state_dict(params)
        logits = torch.zeros((n_heads, *padded.shape[1:]), dtype=torch.half)
        n_pred = torch.zeros(padded.shape[1:], dtype=torch.half)
        for sl in slicers:
            x = torch.clone(padded[sl][None], memory_format=torch.contiguous_format)
            pred = _predict_patch(net, x, combos)[0]
            pred *= gaussian
            logits[sl] += pred
            n_pred[sl[1:]] += gaussian
        torch.div(logits, n_pred, out=logits)
        total = logits if total is None else total + logits
    if len(model.state_dicts) > 1:
        total /= len(model.state_dicts)
    net.load_state_dict(model.state_dicts[0])
    return total[(slice(None), *revert[1:])]


def predict_nnunet(model: NnUNetNetwork, image: Union[Image, Tuple[np.ndarray, Sequence[float]]],
                   use_mirroring: bool = False, tile_step_size: float = 0.5
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Segment an image as nnU-Net does and return results on the original grid.

    Args:
        model: the model.
        image: SimpleITK image or (array (z, y, x), spacing (z, y, x)).
        use_mirroring: test-time mirroring.
        tile_step_size: sliding-window step.

    Returns:
        (segmentation (z, y, x) uint8/uint16, probabilities (K, z, y, x) float32), from
        ``convert_predicted_logits_to_segmentation_with_correct_shape(return_probabilities=True)``.
    """
    from nnunetv2.inference.export_prediction import \
        convert_predicted_logits_to_segmentation_with_correct_shape

    pre = preprocess(model, image)
    logits = sliding_window_logits(model, torch.from_numpy(pre.data), tile_step_size, use_mirroring)
    seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, model.plans_manager, model.configuration_manager, model.label_manager,
        pre.properties, return_probabilities=True)
    return np.asarray(seg), np.asarray(probs, dtype=np.float32)
