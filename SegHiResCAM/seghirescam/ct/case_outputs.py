"""A case's outputs, written with bounded memory: the panel, then one heatmap at a time.

Arrays are in the CT's (k, j, i) order. At KiTS size (512 x 512 x 600) one float32 map is 630 MB;
``outputs.write_explanation`` keeps every map and copies each one again for its statistics
(``heat[~mask]``), which took a KiTS-oriented case past 3 GB. Here a map is measured without a
copy, written, and dropped before the next one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seghirescam.ct.cases import PreparedCase
from seghirescam.ct.figures import PRETTY_METHOD, panel_slices, write_panel
from seghirescam.cam.result import ExplanationResult
from seghirescam.imaging.volumes import SliceOrientation, Volume, write_volume

__all__ = ["write_case_outputs", "map_statistics"]


def _write_panel(folder: Path, case: PreparedCase, maps: dict, target: str) -> Path:
    """The PNG panel (as ``outputs.write_explanation`` draws it); it reads a few slices of each map."""
    orientation = SliceOrientation.from_geometry(case.ct.geometry)
    seg_s, mask_s = orientation.to_slices(case.segment), orientation.to_slices(case.mask)
    spacing = orientation.slice_spacing(case.ct.geometry)
    columns = {f"{PRETTY_METHOD.get(method, method)}\n{layer}": orientation.to_slices(heat)
               for (method, layer), heat in sorted(maps.items(), key=lambda kv: (kv[0][1], kv[0][0]))}
    return write_panel(folder / f"{target}_panel.png", orientation.to_slices(case.ct.array), seg_s, mask_s, columns,
                       panel_slices(seg_s), title=f"target: {target}", aspect=spacing[1] / spacing[2])


def map_statistics(heat: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``outputs.map_statistics`` without copying the map: sums in float64, only M's voxels gathered.

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


def _as_float32(heat: np.ndarray) -> np.ndarray:
    """A float32 map; from float16, copied slab by slab, so all-zero slabs cost no memory pages."""
    if heat.dtype == np.float32:
        return heat
    converted = np.zeros(heat.shape, np.float32)
    for index in np.flatnonzero(heat.reshape(len(heat), -1).any(axis=1)):
        converted[index] = heat[index]
    return converted


def write_case_outputs(folder: Path, case: PreparedCase, result: ExplanationResult, target: str, *,
                       extension: str = ".nrrd", figure: bool = True) -> dict:
    """Panel, heatmaps (float32 files with the CT's geometry) and statistics, bounded in memory.

    The files and the record are those of ``outputs.write_explanation``; the order differs: the
    panel first, then one map at a time is taken out of ``result``, measured, written and
    dropped, so writing holds at most one extra copy of one map (630 MB at 512 x 512 x 600).
    Both inputs are consumed: ``result.maps`` is emptied and ``case.ct`` keeps only its geometry
    once the panel is drawn.

    Args:
        folder: Where to write (it exists).
        case: The case the maps explain (CT, segment and M, (k, j, i)).
        result: Maps in the CT's (k, j, i) order, float32 or float16.
        target: Name used in the file names, e.g. "kidney".
        extension: ".nrrd", ".nii.gz" or ".mha".
        figure: Whether to write the PNG panel.

    Returns:
        The record: target, files written, map statistics, and ``result.summary()``.
    """
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
