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

from seghirescam.evaluation.config import PHANTOM_SEEDS, PHANTOM_SHAPE, PHANTOM_SPACING, REAL_CT_SLAB
from seghirescam.models.card import ModelCard
from seghirescam.cam.inference import predict_volume
from seghirescam.evaluation.localisation import dilate
from seghirescam.synthetic.phantom import LABELS, make_phantom
from seghirescam.imaging.volumes import SliceOrientation, read_volume

__all__ = ["EvalTarget", "phantom_targets", "real_ct_targets", "body_mask", "pixel_set", "reference_maps", "PHANTOM_SEEDS", "PHANTOM_SHAPE",
           "PHANTOM_SPACING", "REAL_CT_SLAB"]

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
    """

    name: str
    group: str
    class_name: str
    ct: np.ndarray
    reference: np.ndarray
    other: np.ndarray
    body: np.ndarray


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
        targets.append(EvalTarget(f"phantom-{seed}/tumor", "tumor (phantoms)", "tumor", ct, tumor, healthy, body))
        targets.append(EvalTarget(f"phantom-{seed}/kidney", "kidney (phantoms)", "kidney", ct, healthy, affected, body))
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


def real_ct_targets(data_dir: str | os.PathLike, slab: tuple[int, int] = REAL_CT_SLAB) -> list[EvalTarget]:
    """The shared real CT's right and left kidney, each with the other kidney as "other".

    Labels come from TotalSegmentator's prediction (example_seg_fast_force_split.nii.gz: 2 right
    kidney, 3 left kidney); the body is thresholded on the whole volume before cutting the slab.

    Args:
        data_dir: Folder with example_ct.nii.gz and example_seg_fast_force_split.nii.gz.
        slab: (first, stop) axial slices in display order (default: the default model's held-out slab).

    Returns:
        Targets "kidney (real CT)" for the right and the left kidney.

    Raises:
        FileNotFoundError: If a file is missing.
    """
    data_dir = Path(data_dir)
    volume = read_volume(data_dir / "example_ct.nii.gz")
    seg = read_volume(data_dir / "example_seg_fast_force_split.nii.gz").array
    orientation = SliceOrientation.from_geometry(volume.geometry)
    ct = orientation.to_slices(volume.array).astype(np.float32)
    seg = orientation.to_slices(seg)
    body = body_mask(ct)[slab[0]:slab[1]]
    ct, seg = np.ascontiguousarray(ct[slab[0]:slab[1]]), np.ascontiguousarray(seg[slab[0]:slab[1]])
    targets = []
    for side, label in _TOTALSEG_KIDNEYS.items():
        other = next(v for s, v in _TOTALSEG_KIDNEYS.items() if s != side)
        targets.append(EvalTarget(f"real-ct/{side}-kidney", "kidney (real CT)", "kidney", ct, seg == label,
                                  seg == other, body))
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
    near = dilate(target.reference, 3)
    result = np.zeros_like(predicted)
    for s in np.flatnonzero(predicted.any((1, 2)) & near.any((1, 2))):
        components, _ = ndimage.label(predicted[s])
        touching = np.unique(components[near[s] & predicted[s]])
        result[s] = np.isin(components, touching[touching > 0])
    return result
