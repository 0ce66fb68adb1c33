"""Writing a case's results: the panel PNG, heatmaps with the CT's geometry, and their record.

The one writer of ``seghirescam explain``, ``demo``, ``batch`` and the cohort script. Arrays are
in the CT's (k, j, i) order. Memory stays bounded at KiTS size (512 x 512 x 600, where one float32
map is 630 MB): the panel is drawn first, then one map at a time is taken out of the result,
measured without a copy, written and dropped. Every file is written atomically.

File names say what they explain: ``<class>__M-<pixel set>_<method>_<layer><ext>`` and
``<class>__M-<pixel set>_panel.png``, e.g. ``kidney__M-liver_seg-hires-grad-cam_bottleneck.nrrd``
for class kidney explained over the liver's voxels (``output_stem``; the one file-safe name rule).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from seghirescam.cam.result import ExplanationResult
from seghirescam.ct.cases import PreparedCase
from seghirescam.ct.figures import panel_column_title, panel_slices, write_panel
from seghirescam.imaging.volumes import SliceOrientation, Volume, write_volume

__all__ = ["write_case_outputs", "map_statistics", "file_safe", "output_stem"]


def file_safe(text: str) -> str:
    """A name usable in file names on every system: each run of characters other than letters, digits,
    ``.`` and ``-`` becomes one ``_`` (so ``__`` never appears inside a name).

    Args:
        text: e.g. "Left kidney", "point 60,48,85".

    Returns:
        e.g. "Left_kidney", "point_60_48_85"; "unnamed" for a name with nothing usable.
    """
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.") or "unnamed"


def output_stem(class_name: str, pixel_set_name: str) -> str:
    """The start of every output file name of a case: the explained class, then the pixel set M.

    Args:
        class_name: The model's class c, e.g. "kidney".
        pixel_set_name: What M is, e.g. "liver" (a segment), "prediction", "point 60,48,85".

    Returns:
        e.g. "kidney__M-liver".
    """
    return f"{file_safe(class_name)}__M-{file_safe(pixel_set_name)}"


def map_statistics(heat: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Share of the map's mass inside M, its mean inside and outside M, and its max; without copying the map.

    Sums run in float64; only M's voxels are gathered.

    Args:
        heat: A map, any float dtype, the mask's shape.
        mask: The pixel set M, bool.

    Returns:
        mass_inside_m (share of the map's mass inside M), mean_inside_m, mean_outside_m, max.
    """
    total = float(heat.sum(dtype=np.float64))
    inside = float(heat[mask].sum(dtype=np.float64))
    n_inside = int(np.count_nonzero(mask))
    n_outside = heat.size - n_inside
    return {"mass_inside_m": round(inside / total, 4) if total > 0 else 0.0,
            "mean_inside_m": round(inside / n_inside, 5) if n_inside else 0.0,
            "mean_outside_m": round((total - inside) / n_outside, 5) if n_outside else 0.0,
            "max": round(float(heat.max()), 5)}


def _write_panel(path: Path, case: PreparedCase, maps: dict, class_name: str, normalize: str) -> Path:
    """The PNG panel: CT, segment (M where the segment is empty), M, then each map; rows are slices holding M
    (the explained ones), labelled with the file's own slice index."""
    orientation = SliceOrientation.from_geometry(case.ct.geometry)
    shown = case.segment if case.segment.any() else case.mask
    seg_s, mask_s = orientation.to_slices(shown), orientation.to_slices(case.mask)
    spacing = orientation.slice_spacing(case.ct.geometry)
    columns = {panel_column_title(method, layer): orientation.to_slices(heat)
               for (method, layer), heat in sorted(maps.items(), key=lambda kv: (kv[0][1], kv[0][0]))}
    axis = orientation.permutation[0]  # the file's numpy axis (k, j, i) that the panel's rows step along
    n = case.ct.array.shape[axis]
    rows = panel_slices(mask_s)
    labels = [f"{'kji'[axis]} = {n - 1 - s if orientation.flips[0] else s}" for s in rows]
    values = ", ".join(map(str, case.label_values))
    described = (f"the segment {case.segment_name!r} (label {values})" if case.pixel_set_name == case.segment_name
                 else f"{case.pixel_set_name} (segment shown: {case.segment_name!r})")
    title = (f"explained class: {class_name}    pixel set M: {described}"
             + f"\nrows: the slices holding M, numbered by the file's own {'KJI'[axis]} index (as --point I,J,K)")
    return write_panel(path, orientation.to_slices(case.ct.array), seg_s, mask_s, columns, rows, title=title,
                       aspect=spacing[1] / spacing[2], row_labels=labels, scaling=normalize)


def _as_float32(heat: np.ndarray) -> np.ndarray:
    """A float32 map; from float16, copied slab by slab, so all-zero slabs cost no memory pages."""
    if heat.dtype == np.float32:
        return heat
    converted = np.zeros(heat.shape, np.float32)
    for index in np.flatnonzero(heat.reshape(len(heat), -1).any(axis=1)):
        converted[index] = heat[index]
    return converted


def write_case_outputs(folder: str | os.PathLike, case: PreparedCase, result: ExplanationResult, *,
                       extension: str = ".nrrd", figure: bool = True) -> dict:
    """Panel, heatmaps (float32 files with the CT's geometry) and their statistics, bounded in memory.

    Files: ``<stem>_panel.png`` and one ``<stem>_<method>_<layer><extension>`` per map, where
    ``<stem>`` = ``output_stem(class, pixel set)``. Writing holds at most one extra copy of one map
    (630 MB at 512 x 512 x 600). Both inputs are consumed: ``result.maps`` is emptied, and
    ``case.ct`` keeps only its geometry once the panel is drawn (its voxels are freed unless the
    caller holds them elsewhere).

    Args:
        folder: Where to write (created if needed).
        case: The case the maps explain (CT, segment and M, (k, j, i); its class and pixel set names).
        result: Maps in the CT's (k, j, i) order, float32 or float16 (``pipeline.explain_ct``).
        extension: ".nrrd", ".nii.gz" or ".mha".
        figure: Whether to write the PNG panel.

    Returns:
        The record: target (the file-name stem), explained_class, pixel_set_name, files written
        ({"panel" | "<method>@<layer>": path}), map statistics ({"<method>@<layer>": ``map_statistics``})
        and ``result.summary()``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    class_name = case.class_name or f"class {case.target_class}"
    stem = output_stem(class_name, case.pixel_set_name)
    record = {"target": stem, "explained_class": class_name, "pixel_set_name": case.pixel_set_name,
              "files": {}, "map_statistics": {}, **result.summary()}
    if figure:
        record["files"]["panel"] = str(_write_panel(folder / f"{stem}_panel.png", case, result.maps, class_name,
                                                    result.normalize))
    case.ct = Volume(np.empty((0, 0, 0), case.ct.array.dtype), case.ct.geometry)  # voxels no longer needed
    for method, layer in list(result.maps):
        heat = _as_float32(result.maps.pop((method, layer)))  # SimpleITK writes no float16
        record["map_statistics"][f"{method}@{layer}"] = map_statistics(heat, case.mask)
        path = write_volume(Volume(heat, case.ct.geometry), folder / f"{stem}_{method}_{layer}{extension}")
        record["files"][f"{method}@{layer}"] = str(path)
        del heat
    return record
