"""The cases of the faithfulness evaluation (phantoms with tumors, the shared real CT), M and reference maps.

Every target is a stack of axial slices in the model's display convention, arrays
(s, r, c) = (slices, rows anterior->posterior, columns patient right->left), with the reference
mask of the explained structure, the labelled structures an explanation should not need (the
other kidney) and the body outline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from torch import nn

from seghirescam.evaluation.config import (PHANTOM_SEEDS, PHANTOM_SHAPE, PHANTOM_SPACING, REAL_CT_SLAB,
                                          REAL_CT_TRAINING_GUARD)
from seghirescam.models.card import ModelCard
from seghirescam.cam.inference import predict_volume
from seghirescam.evaluation.localisation import dilate
from seghirescam.synthetic.phantom import LABELS, make_phantom
from seghirescam.imaging.volumes import SliceOrientation, read_volume

__all__ = ["EvalTarget", "phantom_targets", "real_ct_targets", "body_mask", "pixel_set", "reference_maps", "PHANTOM_SEEDS", "PHANTOM_SHAPE",
           "PHANTOM_SPACING", "REAL_CT_SLAB", "usable_real_ct_slab", "keep_touching"]

_TOTALSEG_KIDNEYS = {"right": 2, "left": 3}


@dataclass(frozen=True)
class EvalTarget:
    """One structure to explain in one case.

    Attributes:
        name: e.g. "phantom-7001/tumor".
        group: The table row group, e.g. "tumor (phantoms)".
        class_name: The model's class, e.g. "tumor".
        ct: HU (s, r, c) float32.
        reference: The structure's reference label (s, r, c) bool.
        other: Labelled structures M should not include (s, r, c) bool, e.g. the other kidney.
        body: Body outline (s, r, c) bool.
        every_slice: Evaluate every slice holding M (the real CT's usable slab), not only the largest.
        spacing: (s, r, c) voxel size in mm (the arrays are a volume with identity direction in LPS:
            slices inferior->superior, rows anterior->posterior, columns right->left).
    """

    name: str
    group: str
    class_name: str
    ct: np.ndarray
    reference: np.ndarray
    other: np.ndarray
    body: np.ndarray
    every_slice: bool = False
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


def phantom_targets(seeds: tuple[int, ...] = PHANTOM_SEEDS, *, shape: tuple[int, int, int] = PHANTOM_SHAPE,
                    spacing: tuple[float, float, float] = PHANTOM_SPACING) -> list[EvalTarget]:
    """Two targets per phantom with a tumor: the tumor, and the kidney without it.

    The tumor's "other" structure is the contralateral kidney; the kidney's is the tumor-bearing
    kidney with its tumor. Phantoms have an identity direction, so (k, j, i) is already (s, r, c).

    Args:
        seeds: Phantom seeds.
        shape: (slices, rows, cols).
        spacing: (i, j, k) mm.

    Returns:
        The targets, tumor and kidney of each seed in turn.
    """
    targets = []
    for seed in seeds:
        phantom = make_phantom(int(seed), shape=shape, spacing=spacing, tumor=True, cyst=False)
        tumor = phantom.labels == LABELS["tumor"]
        if not tumor.any():
            raise ValueError(f"phantom {seed} has no tumor in its field of view; choose another seed")
        tumor_side = int(np.bincount(phantom.sides[tumor]).argmax())
        kidney = phantom.labels == LABELS["kidney"]
        affected = (phantom.sides == tumor_side) & (kidney | tumor)
        healthy = kidney & (phantom.sides != tumor_side)
        ct, body = phantom.ct.astype(np.float32), phantom.body.copy()
        spacing_src = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
        targets.append(EvalTarget(f"phantom-{seed}/tumor", "tumor (phantoms)", "tumor", ct, tumor, healthy, body,
                                  spacing=spacing_src))
        targets.append(EvalTarget(f"phantom-{seed}/kidney", "kidney (phantoms)", "kidney", ct, healthy, affected, body,
                                  spacing=spacing_src))
    return targets


def body_mask(ct: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """The body: the largest connected region above ``threshold_hu``, holes filled slice by slice.

    Args:
        ct: HU (s, r, c).
        threshold_hu: Air/tissue threshold.

    Returns:
        Bool (s, r, c); all False for a volume without tissue.
    """
    above = np.asarray(ct) > threshold_hu
    components, count = ndimage.label(above)
    if count == 0:
        return above
    sizes = np.bincount(components.ravel())[1:]
    body = components == (1 + int(np.argmax(sizes)))
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def usable_real_ct_slab(slab: tuple[int, int] = REAL_CT_SLAB, guard: int = REAL_CT_TRAINING_GUARD) -> tuple[int, int]:
    """The held-out slab without the ``guard`` slices next to the training slices.

    The default model trained on every slice outside ``slab`` (``synthetic.train.HELD_OUT_SLAB``; the
    slab is the volume's last 20 slices, so training ends just below it). Slices 3 mm apart next to
    a training slice nearly repeat it, so the first ``guard`` slices of the slab are left out.

    Returns:
        (first, stop) in display order.
    """
    return slab[0] + guard, slab[1]


def real_ct_targets(data_dir: str | os.PathLike, slab: tuple[int, int] | None = None) -> list[EvalTarget]:
    """The shared real CT's right and left kidney, each with the other kidney as "other", every usable slice.

    The targets hold the whole volume (a volumetric model sees its context); the reference label is
    kept only inside the slab, so only the slab's slices are evaluated.

    Labels come from TotalSegmentator's prediction (example_seg_fast_force_split.nii.gz: 2 right
    kidney, 3 left kidney); the body is thresholded on the whole volume before cutting the slab.

    Args:
        data_dir: Folder with example_ct.nii.gz and example_seg_fast_force_split.nii.gz.
        slab: (first, stop) axial slices in display order (default: ``usable_real_ct_slab()``).

    Returns:
        Targets "kidney (real CT)" for the right and the left kidney.

    Raises:
        FileNotFoundError: If a file is missing.
    """
    data_dir = Path(data_dir)
    slab = slab if slab is not None else usable_real_ct_slab()
    volume = read_volume(data_dir / "example_ct.nii.gz")
    seg = read_volume(data_dir / "example_seg_fast_force_split.nii.gz").array
    orientation = SliceOrientation.from_geometry(volume.geometry)
    ct = orientation.to_slices(volume.array).astype(np.float32)
    seg = orientation.to_slices(seg)
    body = body_mask(ct)
    inside = np.zeros(ct.shape[0], bool)
    inside[slab[0]:slab[1]] = True
    spacing = orientation.slice_spacing(volume.geometry)
    targets = []
    for side, label in _TOTALSEG_KIDNEYS.items():
        other = next(v for s, v in _TOTALSEG_KIDNEYS.items() if s != side)
        reference = (seg == label) & inside[:, None, None]
        targets.append(EvalTarget(f"real-ct/{side}-kidney", "kidney (real CT)", "kidney", ct, reference,
                                  seg == other, body, every_slice=True, spacing=spacing))
    return targets


def reference_maps(m: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The reference rankings of one slice: a random map, M itself, closeness to M's centroid.

    Args:
        m: Pixel set M (H, W) bool, not empty.
        rng: Draws the random map.

    Returns:
        {"random": ..., "M": ..., "centre-distance": ...}, maps (H, W) >= 0.
    """
    rows, cols = np.indices(m.shape)
    centre = np.argwhere(m).mean(0)
    distance = np.hypot(rows - centre[0], cols - centre[1])
    return {"random": rng.random(m.shape), "M": m.astype(np.float64), "centre-distance": distance.max() - distance}


def pixel_set(model: nn.Module, card: ModelCard, target: EvalTarget, mode: str, class_index: int) -> np.ndarray:
    """M on every slice of a target, (s, r, c) bool.

    Args:
        model, card: The model and its card (preprocessing).
        target: The target.
        mode: "label": the reference label; "prediction": the model's argmax == class, keeping the
            connected in-plane components that touch the label dilated by 3 pixels.
        class_index: The class c.

    Raises:
        ValueError: For an unknown mode.
    """
    if mode == "label":
        return target.reference.copy()
    if mode != "prediction":
        raise ValueError(f"pixel_set must be 'label' or 'prediction', got {mode!r}")
    predicted = predict_volume(model, target.ct, preprocess=card.preprocess, device="cpu") == class_index
    return keep_touching(predicted, target.reference)


def keep_touching(predicted: np.ndarray, reference: np.ndarray, radius: int = 3) -> np.ndarray:
    """The predicted in-plane components that touch the reference dilated by ``radius`` pixels, slice by slice.

    Args:
        predicted: (s, r, c) bool, the model's segmentation of the class.
        reference: (s, r, c) bool, the structure's label.
        radius: Dilation of the label, in pixels.

    Returns:
        (s, r, c) bool.
    """
    near = dilate(reference, radius)
    result = np.zeros_like(predicted, dtype=bool)
    for s in np.flatnonzero(predicted.any((1, 2)) & near.any((1, 2))):
        components, _ = ndimage.label(predicted[s])
        touching = np.unique(components[near[s] & predicted[s]])
        result[s] = np.isin(components, touching[touching > 0])
    return result
