"""Writing a case's results: heatmaps with the CT's geometry, the panel PNG, a JSON record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from seghirescam.ct.figures import PRETTY_METHOD, panel_slices, write_panel
from seghirescam.cam.result import ExplanationResult
from seghirescam.imaging.volumes import SliceOrientation, Volume, write_volume

__all__ = ["write_explanation", "write_json", "map_statistics"]


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def map_statistics(heat: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Share of the map's mass inside M, and its mean inside and outside M (on explained slices)."""
    total = float(heat.sum(dtype=np.float64))
    inside = float(heat[mask].sum(dtype=np.float64))
    return {"mass_inside_m": round(inside / total, 4) if total > 0 else 0.0,
            "mean_inside_m": round(float(heat[mask].mean()), 5) if mask.any() else 0.0,
            "mean_outside_m": round(float(heat[~mask].mean()), 5) if (~mask).any() else 0.0,
            "max": round(float(heat.max()), 5)}


def write_explanation(out_dir: str | os.PathLike, ct: Volume, result: ExplanationResult, mask: np.ndarray,
                      segment: np.ndarray, target: str, *, extension: str = ".nrrd", figure: bool = True) -> dict:
    """Write one target's heatmaps (CT geometry), its panel and return its JSON record.

    Args:
        out_dir: Folder (created if needed).
        ct: The CT the maps explain.
        result: Maps in the CT's (k, j, i) order (``pipeline.explain_ct``).
        mask: The pixel set M, bool (k, j, i).
        segment: The segment shown in the panel, bool (k, j, i).
        target: Name used in file names, e.g. "kidney".
        extension: ".nrrd", ".nii.gz" or ".mha".
        figure: Whether to write the PNG panel.

    Returns:
        A record: files written, run metadata and per-map statistics.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, stats = {}, {}
    for (method, layer), heat in result.maps.items():
        name = f"{method}@{layer}"
        files[name] = str(write_volume(Volume(heat, ct.geometry), out_dir / f"{target}_{method}_{layer}{extension}"))
        stats[name] = map_statistics(heat, mask)
    if figure:
        orientation = SliceOrientation.from_geometry(ct.geometry)
        shown = segment if segment.any() else mask
        seg_s, mask_s = orientation.to_slices(shown), orientation.to_slices(mask)
        spacing = orientation.slice_spacing(ct.geometry)
        columns = {f"{PRETTY_METHOD.get(method, method)}\n{layer}": orientation.to_slices(heat)
                   for (method, layer), heat in sorted(result.maps.items(), key=lambda kv: (kv[0][1], kv[0][0]))}
        files["panel"] = str(write_panel(out_dir / f"{target}_panel.png", orientation.to_slices(ct.array), seg_s,
                                         mask_s, columns, panel_slices(seg_s), title=f"target: {target}",
                                         aspect=spacing[1] / spacing[2]))
    return {"target": target, "files": files, "map_statistics": stats, **result.summary()}
