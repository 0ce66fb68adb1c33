"""nnU-Net's own view of a CT: preprocessing into the network frame and mapping volumes back.

Axis orders at this boundary:
- original grid: SimpleITK numpy order (z, y, x) = (k, j, i); spacing in the same order
  (``Geometry.spacing[::-1]``), as nnU-Net's ``SimpleITKIO`` gives it;
- network frame: (C, a0, a1, a2) = the original axes permuted by the plans' ``transpose_forward``,
  cropped by ``crop_to_nonzero`` and resampled to the configuration's spacing. For '2d'
  configurations a0 is the slice axis (not resampled) and the network sees (C, a1, a2) slices.

Every step is nnunetv2's own function (``DefaultPreprocessor.run_case_npy``,
``resample_data_or_seg_to_shape``, ``resampling_fn_probabilities``, ``insert_crop_into_image``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple, Union

import numpy as np

from seghirescam.models.nnunet.folder import NnUNetNetwork

__all__ = ["Preprocessed", "image_to_nnunet_array", "preprocess", "mask_to_network_frame", "network_frame_to_original"]

Image = Any  # SimpleITK.Image


@dataclass
class Preprocessed:
    """A case in the network frame plus what is needed to go back to the original grid.

    Attributes:
        data: float32 (C, a0, a1, a2) network-frame array.
        properties: nnU-Net's properties dict ('spacing' (z, y, x), 'shape_before_cropping'
            (transposed axes), 'bbox_used_for_cropping' (transposed axes),
            'shape_after_cropping_and_before_resampling').
        original_shape: (z, y, x) shape of the original image.
    """
    data: np.ndarray
    properties: dict
    original_shape: Tuple[int, int, int]


def image_to_nnunet_array(image: Union[Image, Sequence[Image], Tuple[np.ndarray, Sequence[float]]]
                          ) -> Tuple[np.ndarray, List[float]]:
    """Convert SimpleITK image(s) to nnU-Net's (C, z, y, x) array and (z, y, x) spacing.

    Does what ``nnunetv2.imageio.simpleitk_reader_writer.SimpleITKIO.read_images`` does
    for 3D images (GetArrayFromImage, add channel axis, spacing reversed and abs'd).

    Args:
        image: a 3D SimpleITK image, a list of them (one per channel), or a tuple
            (array (z, y, x) or (C, z, y, x), spacing (z, y, x)).

    Returns:
        (float32 array (C, z, y, x), spacing [z, y, x]).

    Raises:
        ValueError: non-3D input or channels with different shapes.
    """
    if isinstance(image, tuple) and len(image) == 2 and isinstance(image[0], np.ndarray):
        arr, spacing = image
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4 or len(spacing) != 3:
            raise ValueError("expected array (z, y, x) or (C, z, y, x) and spacing (z, y, x)")
        return arr.astype(np.float32, copy=False), [abs(float(s)) for s in spacing]
    import SimpleITK as sitk

    images = list(image) if isinstance(image, (list, tuple)) else [image]
    arrays, spacings = [], []
    for im in images:
        a = sitk.GetArrayFromImage(im)
        if a.ndim != 3:
            raise ValueError(f"expected a 3D SimpleITK image, got {a.ndim}D")
        arrays.append(a[None])
        spacings.append([abs(float(s)) for s in im.GetSpacing()[::-1]])
    if any(a.shape != arrays[0].shape for a in arrays) or any(s != spacings[0] for s in spacings):
        raise ValueError("all channel images must share shape and spacing")
    return np.vstack(arrays).astype(np.float32), spacings[0]


def preprocess(model: NnUNetNetwork, image: Union[Image, Sequence[Image], Tuple[np.ndarray, Sequence[float]]]
               ) -> Preprocessed:
    """nnU-Net's inference preprocessing of one case.

    Runs the configuration's preprocessor class (``DefaultPreprocessor``)'s
    ``run_case_npy``: transpose_forward, crop_to_nonzero, normalization (e.g.
    CTNormalization with the plans' foreground intensity properties) and
    ``resampling_fn_data`` to the configuration spacing — what
    ``PreprocessAdapterFromNpy`` does inside ``predict_single_npy_array``.

    Args:
        model: the loaded model.
        image: see :func:`image_to_nnunet_array`.

    Returns:
        The network-frame data (C, a0, a1, a2) and its properties.

    Raises:
        ValueError: wrong number of channels.
    """
    data, spacing = image_to_nnunet_array(image)
    if data.shape[0] != model.input_channels:
        raise ValueError(f"model expects {model.input_channels} channels, got {data.shape[0]}")
    pre = model.configuration_manager.preprocessor_class(verbose=False)
    props = {"spacing": spacing}
    out, _, props = pre.run_case_npy(data, None, props, model.plans_manager,
                                     model.configuration_manager, model.dataset_json)
    return Preprocessed(np.ascontiguousarray(out, dtype=np.float32), props, tuple(data.shape[1:]))


def _spacings(model: NnUNetNetwork, props: dict) -> Tuple[List[float], List[float]]:
    """(original spacing, network spacing), both in transposed axes, as nnU-Net computes them."""
    tf = model.plans_manager.transpose_forward
    original = [props["spacing"][i] for i in tf]
    target = list(model.configuration_manager.spacing)
    if len(target) < len(original):  # 2d: slice axis keeps its spacing
        target = [original[0]] + target
    return original, target


def mask_to_network_frame(model: NnUNetNetwork, pre: Preprocessed, mask_zyx: np.ndarray) -> np.ndarray:
    """Map a boolean mask on the original grid into the network frame.

    Same transpose (``transpose_forward``) and crop (``bbox_used_for_cropping``) as the
    image, then nearest-neighbour resampling with nnunetv2's
    ``resample_data_or_seg_to_shape(is_seg=True, order=0)`` (the data's resampling
    function family, so the voxel-coordinate convention matches the image's resampling;
    separate-z handling from the configuration's seg kwargs).

    Args:
        model: the model.
        pre: the preprocessed case.
        mask_zyx: bool array with the original image's (z, y, x) shape.

    Returns:
        bool array with the network frame's spatial shape (a0, a1, a2).

    Raises:
        ValueError: wrong mask shape.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    mask_zyx = np.asarray(mask_zyx)
    if mask_zyx.shape != tuple(pre.original_shape):
        raise ValueError(f"mask shape {mask_zyx.shape} != image shape {pre.original_shape} (z, y, x)")
    m = mask_zyx.astype(np.uint8).transpose(model.plans_manager.transpose_forward)
    m = m[bounding_box_to_slice(pre.properties["bbox_used_for_cropping"])]
    original, target = _spacings(model, pre.properties)
    kw = model.configuration_manager.configuration.get("resampling_fn_seg_kwargs", {})
    out = resample_data_or_seg_to_shape(m[None], pre.data.shape[1:], original, target, is_seg=True,
                                        order=0, order_z=0,
                                        force_separate_z=kw.get("force_separate_z", None))
    return np.asarray(out[0]) > 0


def network_frame_to_original(model: NnUNetNetwork, pre: Preprocessed, volume: np.ndarray) -> np.ndarray:
    """Map network-frame maps (K, a0, a1, a2) back to the original grid (K, z, y, x).

    The inverse steps of ``convert_predicted_logits_to_segmentation_with_correct_shape``:
    ``resampling_fn_probabilities`` to the cropped shape, insertion into the bounding box
    of ``crop_to_nonzero`` (zeros outside, ``insert_crop_into_image``), then
    ``transpose_backward``.

    Args:
        model: the model.
        pre: the preprocessed case.
        volume: float array (K, a0, a1, a2) in the network frame.

    Returns:
        float32 array (K, z, y, x) on the original grid.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    props = pre.properties
    original, target = _spacings(model, props)
    res = model.configuration_manager.resampling_fn_probabilities(
        np.asarray(volume, dtype=np.float32), props["shape_after_cropping_and_before_resampling"],
        target, original)
    res = np.asarray(res, dtype=np.float32)
    full = np.zeros((res.shape[0], *props["shape_before_cropping"]), np.float32)
    full = insert_crop_into_image(full, res, props["bbox_used_for_cropping"])
    return np.ascontiguousarray(full.transpose([0] + [i + 1 for i in model.plans_manager.transpose_backward]))
