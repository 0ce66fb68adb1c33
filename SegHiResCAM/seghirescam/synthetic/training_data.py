"""Training cases for the default model: phantoms, and the real CT with lesions inserted.

Every case is a stack of axial slices in the model's display convention, arrays
(s, r, c) = (slices, rows anterior->posterior, columns patient right->left), with KiTS
labels 0 background, 1 kidney, 2 tumor, 3 cyst.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seghirescam.synthetic.phantom import make_phantom
from seghirescam.imaging.volumes import SliceOrientation, read_volume

__all__ = ["Case", "phantom_case", "real_ct_cases", "insert_lesions"]


@dataclass(frozen=True)
class Case:
    """Slices (s, r, c) in HU (int16) with labels (uint8), and where they came from."""

    name: str
    ct: np.ndarray
    labels: np.ndarray
    spacing_src: tuple[float, float, float]


def phantom_case(seed: int, rng: np.random.Generator) -> Case:
    """A random-size, random-spacing phantom with a tumor and, half the time, a cyst."""
    size = int(rng.choice([96, 112, 128, 144]))
    in_plane = float(rng.uniform(2.2, 3.4))
    phantom = make_phantom(seed, shape=(int(rng.integers(28, 44)), size, size),
                           spacing=(in_plane, in_plane, float(rng.uniform(3.0, 6.0))),
                           tumor=bool(rng.random() < 0.85), cyst=bool(rng.random() < 0.5))
    spacing = phantom.geometry.spacing
    return Case(f"phantom-{seed}", phantom.ct, phantom.labels, (spacing[2], spacing[1], spacing[0]))


def _sphere_blob(shape: tuple[int, int, int], centre: np.ndarray, radius_vox: np.ndarray, rng: np.random.Generator,
                 lobes: int) -> np.ndarray:
    """A union of ``lobes`` ellipsoids around ``centre`` (voxel units, (s, r, c))."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    blob = np.zeros(shape, bool)
    for lobe in range(lobes):
        offset = rng.normal(scale=0.45, size=3) * radius_vox if lobe else np.zeros(3)
        scale = radius_vox * (rng.uniform(0.6, 0.9) if lobe else 1.0)
        distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre + offset, scale))
        blob |= distance <= 1.0
    return blob


def insert_lesions(ct: np.ndarray, labels: np.ndarray, spacing_src: tuple[float, float, float],
                   rng: np.random.Generator, *, tumors: int = 1, cysts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Paint synthetic tumors and cysts into the kidneys of a real CT.

    Tumors: heterogeneous masses 15-35 mm across, 25-60 HU above the kidney (for a
    non-contrast scan they are hyperdense), sometimes lobulated, centred on the kidney rim so
    they may bulge out. Cysts: water density (0-12 HU), 10-25 mm, sharp margins, inside.

    Args:
        ct: HU slices (s, r, c).
        labels: KiTS labels (s, r, c) with 1 = kidney.
        spacing_src: Voxel size (s, r, c) in mm.
        rng: Random generator (the only source of chance).
        tumors, cysts: How many of each.

    Returns:
        New (ct, labels); the inputs are not modified.
    """
    ct, labels = ct.astype(np.float32).copy(), labels.copy()
    spacing = np.asarray(spacing_src, dtype=float)
    kidney = np.argwhere(labels == 1)
    if kidney.size == 0:
        return ct.astype(np.int16), labels
    for kind in ["tumor"] * tumors + ["cyst"] * cysts:
        centre = kidney[rng.integers(len(kidney))].astype(float)
        diameter = rng.uniform(15, 35) if kind == "tumor" else rng.uniform(10, 25)
        blob = _sphere_blob(ct.shape, centre, diameter / 2 / spacing, rng, lobes=int(rng.integers(1, 4)) if kind == "tumor" else 1)
        if kind == "tumor":
            blob &= ~np.isin(labels, [3])  # keep earlier cysts intact
            base = ct[labels == 1].mean() + rng.uniform(25, 60)
            texture = rng.normal(scale=12, size=ct.shape)
            ct[blob] = base + texture[blob]
            labels[blob] = 2
        else:
            blob &= labels == 1
            ct[blob] = rng.uniform(0, 12) + rng.normal(scale=6, size=int(blob.sum()))
            labels[blob] = 3
    return np.clip(ct, -1024, 3071).astype(np.int16), labels


def real_ct_cases(data_dir: str | os.PathLike, held_out: tuple[int, int], rng: np.random.Generator,
                  copies: int = 6) -> tuple[list[Case], Case]:
    """The shared real CT as training copies with lesions, and a held-out slab.

    Args:
        data_dir: Folder with example_ct.nii.gz and example_seg_fast_force_split.nii.gz.
        held_out: (first, stop) axial slice range kept out of training (in display order).
        rng: Random generator for the lesions.
        copies: Training copies, each with its own lesions.

    Returns:
        (training cases, held-out case). TotalSegmentator's labels 2 and 3 (kidneys) become 1.
    """
    data_dir = Path(data_dir)
    ct_volume = read_volume(data_dir / "example_ct.nii.gz")
    seg = read_volume(data_dir / "example_seg_fast_force_split.nii.gz").array
    orientation = SliceOrientation.from_geometry(ct_volume.geometry)
    ct = orientation.to_slices(ct_volume.array).astype(np.int16)
    labels = orientation.to_slices(np.isin(seg, [2, 3]).astype(np.uint8))
    spacing = orientation.slice_spacing(ct_volume.geometry)
    keep = np.ones(ct.shape[0], bool)
    keep[held_out[0]:held_out[1]] = False
    train = []
    for copy in range(copies):
        lesion_ct, lesion_labels = insert_lesions(ct[keep], labels[keep], spacing, rng,
                                                  tumors=int(rng.integers(0, 3)), cysts=int(rng.integers(0, 2)))
        train.append(Case(f"real-ct-{copy}", lesion_ct, lesion_labels, spacing))
    slab_ct, slab_labels = insert_lesions(ct[~keep], labels[~keep], spacing, np.random.default_rng(10_000),
                                          tumors=1, cysts=1)
    return train, Case("real-ct-held-out", slab_ct, slab_labels, spacing)
