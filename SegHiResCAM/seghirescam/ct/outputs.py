"""Writing a case's results: the panel PNG, heatmaps with the CT's geometry, and their record.

The one writer of ``seghirescam explain``, ``demo``, ``batch`` and the cohort script. Arrays are
in the CT's (k, j, i) order. Memory stays bounded at KiTS size (512 x 512 x 600, where one float32
map is 630 MB): the panel is drawn first, then one map at a time is taken out of the result,
measured without a copy, written and dropped. Every file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from seghirescam.cam.result import ExplanationResult
from seghirescam.ct.cases import PreparedCase
from seghirescam.ct.figures import panel_column_title, panel_slices, write_panel
from seghirescam.imaging.volumes import SliceOrientation, Volume, write_volume

__all__ = ["write_case_outputs", "map_statistics"]


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


def _write_panel(folder: Path, case: PreparedCase, maps: dict, target: str) -> Path:
    """The PNG panel: CT, segment (M where the segment is empty), M, then each map; a few slices of each."""
    orientation = SliceOrientation.from_geometry(case.ct.geometry)
    shown = case.segment if case.segment.any() else case.mask
    seg_s, mask_s = orientation.to_slices(shown), orientation.to_slices(case.mask)
    spacing = orientation.slice_spacing(case.ct.geometry)
    columns = {panel_column_title(method, layer): orientation.to_slices(heat)
               for (method, layer), heat in sorted(maps.items(), key=lambda kv: (kv[0][1], kv[0][0]))}
    return write_panel(folder / f"{target}_panel.png", orientation.to_slices(case.ct.array), seg_s, mask_s, columns,
                       panel_slices(seg_s), title=f"target: {target}", aspect=spacing[1] / spacing[2])


def _as_float32(heat: np.ndarray) -> np.ndarray:
    """A float32 map; from float16, copied slab by slab, so all-zero slabs cost no memory pages."""
    if heat.dtype == np.float32:
        return heat
    converted = np.zeros(heat.shape, np.float32)
    for index in np.flatnonzero(heat.reshape(len(heat), -1).any(axis=1)):
        converted[index] = heat[index]
    return converted


def write_case_outputs(folder: str | os.PathLike, case: PreparedCase, result: ExplanationResult, target: str, *,
                       extension: str = ".nrrd", figure: bool = True) -> dict:
    """Panel, heatmaps (float32 files with the CT's geometry) and their statistics, bounded in memory.

    Files: ``<target>_panel.png`` and one ``<target>_<method>_<layer><extension>`` per map.
    Writing holds at most one extra copy of one map (630 MB at 512 x 512 x 600). Both inputs
    are consumed: ``result.maps`` is emptied, and ``case.ct`` keeps only its geometry once the
    panel is drawn (its voxels are freed unless the caller holds them elsewhere).

    Args:
        folder: Where to write (created if needed).
        case: The case the maps explain (CT, segment and M, (k, j, i)).
        result: Maps in the CT's (k, j, i) order, float32 or float16 (``pipeline.explain_ct``).
        target: Name used in the file names, e.g. "kidney".
        extension: ".nrrd", ".nii.gz" or ".mha".
        figure: Whether to write the PNG panel.

    Returns:
        The record: target, files written ({"panel" | "<method>@<layer>": path}), map statistics
        ({"<method>@<layer>": ``map_statistics``}) and ``result.summary()``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"target": target, "files": {}, "map_statistics": {}, **result.summary()}
    if figure:
        record["files"]["panel"] = str(_write_panel(folder, case, result.maps, target))
    case.ct = Volume(np.empty((0, 0, 0), case.ct.array.dtype), case.ct.geometry)  # voxels no longer needed
    for method, layer in list(result.maps):
        heat = _as_float32(result.maps.pop((method, layer)))  # SimpleITK writes no float16
        record["map_statistics"][f"{method}@{layer}"] = map_statistics(heat, case.mask)
        path = write_volume(Volume(heat, case.ct.geometry), folder / f"{target}_{method}_{layer}{extension}")
        record["files"][f"{method}@{layer}"] = str(path)
        del heat
    return record
