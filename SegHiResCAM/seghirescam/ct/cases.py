"""One case from files: CT and label file in, the segment, the pixel set M and the target class out.

Shared by ``seghirescam explain`` and ``seghirescam batch``. Arrays are in the CT's numpy
(k, j, i) order; the label file is resampled onto the CT's grid (nearest neighbour) or refused
when the two do not overlap. Points are given as (i, j, k) voxel indices of the CT, as users
read them in a viewer.

Label values get names only from the user (``--label-names``) or from the label file itself
(a Slicer ``.seg.nrrd``'s segment names), never from the model: a label map's values need not
follow the model's classes (TotalSegmentator's 2 is the right kidney, a KiTS model's 2 is tumor).
A segment without a name therefore needs its target class given.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seghirescam.models.class_names import resolve_target_class
from seghirescam.models.explainable import ExplainableModel
from seghirescam.ct.pipeline import predict_ct
from seghirescam.cam.pixel_sets import DEFAULT_POINT_RADIUS, FILE_PIXEL_SETS, pixel_set_from_points
from seghirescam.imaging.volumes import Volume, axial_axis, read_volume, resample_labels_onto

__all__ = ["PreparedCase", "PIXEL_SETS", "prepare_case", "read_label_names", "label_names_in_file", "resolve_segment"]

PIXEL_SETS = FILE_PIXEL_SETS  # the pixel sets of a case given as files (``seghirescam.cam.vocabulary``)


@dataclass
class PreparedCase:
    """A CT ready to explain.

    Attributes:
        ct: The CT (HU) with its geometry.
        segment: The chosen segment, bool (k, j, i) on the CT's grid.
        mask: The pixel set M, bool (k, j, i) (the same object as ``segment`` for pixel set "segment").
        segment_name: The segment's name (from the label names, or "label N").
        label_values: The label values that make up the segment.
        target_class: The class c whose logits are explained.
        class_name: The model's name of class c ("" when not known).
        mask_name: What M is, for file names and titles: the segment's name, "prediction" or
            "point I,J,K" ("": the segment's name).
    """

    ct: Volume
    segment: np.ndarray
    mask: np.ndarray
    segment_name: str
    label_values: list[int]
    target_class: int
    class_name: str = ""
    mask_name: str = ""

    @property
    def pixel_set_name(self) -> str:
        """What M is: ``mask_name``, else the segment's name."""
        return self.mask_name or self.segment_name


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """Read a JSON ``{value: name}`` file of a label map.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If it is not such a JSON object.
    """
    try:
        return {int(k): str(v) for k, v in json.loads(Path(path).read_text(encoding="utf-8")).items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a JSON object of label value -> name: {error}") from error


def label_names_in_file(path: str | os.PathLike) -> dict[int, str]:
    """The segment names a label file stores in its header: Slicer's ``SegmentN_Name`` and
    ``SegmentN_LabelValue`` fields (``.seg.nrrd``), one layer only.

    Args:
        path: The label file (a folder, e.g. DICOM, has none).

    Returns:
        Label value -> name; {} when the file names no labels or its header cannot be read
        (reading the voxels reports that).
    """
    import SimpleITK as sitk

    if Path(path).is_dir():
        return {}
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    fields = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    names = {}
    for key, name in fields.items():
        match = re.fullmatch(r"Segment(\d+)_Name", key)
        if not match:
            continue
        value, layer = fields.get(f"Segment{match.group(1)}_LabelValue"), fields.get(f"Segment{match.group(1)}_Layer", "0")
        if value is None or not value.strip().isdigit() or layer.strip() != "0":
            continue
        names[int(value)] = name.strip()
    return names


def resolve_segment(names: dict[int, str], values: Sequence[int] | None = None,
                    name: str | None = None) -> tuple[list[int], str]:
    """The label values and name of a segment given either by values or by name.

    Args:
        names: Label value -> name.
        values: Label values of the segment (exclusive with ``name``).
        name: Segment name, matched case-insensitively against ``names``.

    Returns:
        (values, segment name).

    Raises:
        ValueError: If no label has the name, or neither/both of values and name are given.
    """
    if (values is None) == (name is None):
        raise ValueError("give the segment either as label values or as a name")
    if name is not None:
        if not names:
            raise ValueError(f"no label is named {name!r}: the label file names no labels; give --label-names "
                             "FILE.json ({value: name}), or the label value(s) with --label and the class with "
                             "--target-class")
        found = [v for v, n in names.items() if n.lower() == name.lower()]
        if not found:
            raise ValueError(f"no label is named {name!r}; known names: {', '.join(names.values())}")
        return found, name
    values = [int(v) for v in values]
    return values, names.get(values[0], f"label {values[0]}")


def prepare_case(ct_path: str | os.PathLike, seg_path: str | os.PathLike, model: ExplainableModel, *,
                 label_values: Sequence[int] | None = None, segment_name: str | None = None,
                 label_names: dict[int, str] | None = None, target_class: str | int | None = None,
                 pixel_set: str = "segment", point: Sequence[int] | None = None,
                 point_radius: int = DEFAULT_POINT_RADIUS,
                 device: str = "auto") -> PreparedCase:
    """Read a CT and its label file and build everything an explanation needs.

    Args:
        ct_path: CT file or DICOM folder (HU).
        seg_path: Label file; resampled onto the CT's grid if needed.
        model: Any explainable model (it names the classes and its segment-to-class rule).
        label_values, segment_name: The segment, as label values or as a name (one of the two).
        label_names: Label value -> name (default: the names stored in the label file, else none;
            never the model's classes).
        target_class: Class index or name (default: from the segment's name, which must then be
            known); see ``models.class_names.resolve_target_class``.
        pixel_set: "segment", "prediction" (the model's own argmax of the class) or "point".
        point: (i, j, k) voxel index of the CT, for pixel set "point".
        point_radius: In-plane disc radius (pixels) around the point (``DEFAULT_POINT_RADIUS``).
        device: Device for pixel set "prediction".

    Returns:
        The prepared case.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If a file cannot be read, the two grids do not overlap, the segment is
            unknown or empty on the CT's grid, the point is missing or outside, or the model
            predicts none of the class.
    """
    if pixel_set not in PIXEL_SETS:
        raise ValueError(f"pixel set must be one of {PIXEL_SETS}, got {pixel_set!r}")
    ct = read_volume(ct_path)
    labels = resample_labels_onto(read_volume(seg_path), ct.geometry, ct.array.shape)
    names = label_names if label_names is not None else label_names_in_file(seg_path)
    values, name = resolve_segment(names, label_values, segment_name)
    segment = np.isin(labels, values)
    del labels
    if not segment.any():
        raise ValueError(f"the segment {name!r} (label {values}) is empty on the CT's grid")
    if target_class is None and not any(v in names for v in values):
        raise ValueError(f"label {', '.join(map(str, values))} has no name (no --label-names, and {Path(seg_path).name} "
                         f"stores none), so the class to explain is not known: give --target-class, one of "
                         f"{', '.join(f'{i} {n}' for i, n in enumerate(model.class_names))}")
    c = resolve_target_class(model.class_names, target_class, name, match=model.class_for_segment)
    if pixel_set == "segment":
        mask = segment
    elif pixel_set == "prediction":
        mask = predict_ct(ct, model, device=device) == c
        if not mask.any():
            raise ValueError(f"the model predicts no {model.class_names[c]} on this CT: no pixel set")
    else:
        if point is None:
            raise ValueError("--pixel-set point needs --point I,J,K")
        i, j, k = (int(v) for v in point)
        mask = pixel_set_from_points(ct.array.shape, [(k, j, i)], radius=point_radius, axis=axial_axis(ct.geometry))
    mask_name = {"segment": name, "prediction": "prediction"}.get(pixel_set) or f"point {','.join(map(str, point))}"
    return PreparedCase(ct, segment, mask, name, values, c, model.class_names[c], mask_name)
