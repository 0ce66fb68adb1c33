"""PNG panels in the manner of the paper's Fig. 4: CT, segment, M, then each CAM, per slice.

Arrays come in as axial slices in display convention (s, r, c): anterior at the top,
the patient's right on the image's left.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seghirescam.atomic import atomic_path
from seghirescam.cam.method_info import display_name

__all__ = ["panel_slices", "write_panel", "panel_column_title"]

CT_WINDOW = (-160.0, 240.0)


def panel_slices(segment: np.ndarray, around: int = 2, step: int | None = None) -> list[int]:
    """The slice where the segment is largest, and ``around`` slices above and below it.

    Args:
        segment: Bool (s, r, c).
        around: Slices shown on each side.
        step: Distance between shown slices (default: spread over the segment's extent).

    Returns:
        Sorted slice indices inside the volume (fewer if the volume is thin).

    Raises:
        ValueError: If the segment is empty.
    """
    areas = segment.reshape(segment.shape[0], -1).sum(1)
    if not areas.any():
        raise ValueError("the segment is empty: no slice to show")
    centre = int(np.argmax(areas))
    present = np.flatnonzero(areas)
    if step is None:
        step = max(1, (present[-1] - present[0]) // (2 * around + 2))
    chosen = {min(max(centre + k * step, 0), segment.shape[0] - 1) for k in range(-around, around + 1)}
    return sorted(chosen)


def panel_column_title(method: str, layer: str) -> str:
    """A panel column's title: the method's display name from the registry (its key if unregistered), then the layer.

    Args:
        method: A method key, e.g. "seg-hires-grad-cam".
        layer: The explained layer.

    Returns:
        E.g. "Seg-HiRes-Grad CAM\nbottleneck".
    """
    return f"{display_name(method)}\n{layer}"


def _heat_rgba(heat: np.ndarray) -> np.ndarray:
    """Inferno colours whose opacity rises with the value, so weak evidence stays see-through."""
    heat = np.clip(np.nan_to_num(heat.astype(np.float32)), 0, 1)
    rgba = matplotlib.colormaps["inferno"](heat)
    rgba[..., 3] = np.clip(heat * 1.6, 0, 0.85) * (heat >= 0.02)
    return rgba


def write_panel(path: str | os.PathLike, ct: np.ndarray, segment: np.ndarray, mask: np.ndarray,
                maps: dict[str, np.ndarray], slices: list[int], *, title: str = "",
                aspect: float = 1.0) -> Path:
    """Write a grid: one row per slice; columns CT, segment, M, then one per map.

    Args:
        path: The PNG to write (atomically: temporary name, then rename).
        ct: HU (s, r, c).
        segment: Bool (s, r, c), drawn as a contour/overlay on the CT.
        mask: Pixel set M, bool (s, r, c).
        maps: Column title -> map (s, r, c) in [0, 1], drawn over the CT with inferno.
        slices: Rows to show.
        title: Figure title.
        aspect: Row spacing / column spacing, so anatomy is not stretched.

    Returns:
        The path written.
    """
    path = Path(path)
    columns = ["CT", "segment", "M (pixel set)", *maps]
    fig = Figure(figsize=(2.3 * len(columns), 2.3 * len(slices) + 0.6))  # no pyplot: no global backend
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(slices), len(columns), squeeze=False)
    for row, s in enumerate(slices):
        for col, name in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(ct[s], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], aspect=aspect, interpolation="nearest")
            if name == "segment":
                ax.imshow(np.ma.masked_where(~segment[s], segment[s]), cmap="autumn", alpha=0.55, aspect=aspect)
            elif name.startswith("M "):
                ax.imshow(np.ma.masked_where(~mask[s], mask[s]), cmap="cool", alpha=0.6, aspect=aspect)
            elif name in maps:
                ax.imshow(_heat_rgba(maps[name][s]), aspect=aspect, interpolation="bilinear")
                if segment[s].any():
                    ax.contour(segment[s], levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:
                ax.set_ylabel(f"slice {s}", fontsize=8)
    fig.suptitle(title + "\n(axial, anterior up, patient's right on the image left; cyan: segment outline)",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=90)
    return path
