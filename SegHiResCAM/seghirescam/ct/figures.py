"""PNG panels in the manner of the paper's Fig. 4: CT, segment, M, then each CAM, per slice.

Arrays come in as axial slices in display convention (s, r, c): anterior at the top,
the patient's right on the image's left.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.cm
import matplotlib.colors
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seghirescam.atomic import atomic_path
from seghirescam.cam.method_info import display_name

__all__ = ["panel_slices", "write_panel", "panel_column_title", "SCALING_TEXT"]

CT_WINDOW = (-160.0, 240.0)
SCALING_TEXT = {  # how the maps' colours read, per normalisation (a key of ``cam.vocabulary.NORMALIZATIONS``):
    # (colour bar label, sentence for the title)
    "volume": ("CAM, per volume (0-1)", "each map divided by its maximum over the volume"),
    "slice": ("CAM, per slice (0-1)", "each slice of a map divided by that slice's maximum"),
    "none": ("CAM, raw values", "raw CAM values, not rescaled; colours span 0 to the largest value shown"),
}


def panel_slices(segment: np.ndarray, around: int = 2) -> list[int]:
    """The slice where the segment (or M) is largest and up to ``around`` more on each side, all holding it.

    Rows are spread over the segment's extent, each snapped to the nearest slice that holds it, so
    a segment on one slice (a point's disc) gives that slice alone: no empty row is ever shown.

    Args:
        segment: Bool (s, r, c).
        around: Slices shown on each side of the largest one, at most.

    Returns:
        Sorted slice indices (at most ``2 * around + 1``), each holding the segment.

    Raises:
        ValueError: If the segment is empty.
    """
    areas = segment.reshape(segment.shape[0], -1).sum(1)
    if not areas.any():
        raise ValueError("the segment is empty: no slice to show")
    centre = int(np.argmax(areas))
    present = np.flatnonzero(areas)
    step = max(1, (present[-1] - present[0]) // (2 * around + 2))
    wanted = np.clip([centre + k * step for k in range(-around, around + 1)], present[0], present[-1])
    nearest = present[np.abs(present[None, :] - wanted[:, None]).argmin(axis=1)]  # snapped onto slices holding it
    return sorted(set(nearest.tolist()))


def panel_column_title(method: str, layer: str) -> str:
    """A panel column's title: the method's display name from the registry (its key if unregistered), then the layer.

    Args:
        method: A method key, e.g. "seg-hires-grad-cam".
        layer: The explained layer.

    Returns:
        E.g. "Seg-HiRes-Grad CAM\nbottleneck".
    """
    return f"{display_name(method)}\n{layer}"


def _opacity(heat: np.ndarray) -> np.ndarray:
    """Opacity of a value in [0, 1]: rising with it, so weak evidence stays see-through; none below 0.02."""
    return np.clip(heat * 1.6, 0, 0.85) * (heat >= 0.02)


def _heat_rgba(heat: np.ndarray, top: float = 1.0) -> np.ndarray:
    """Inferno colours of ``heat / top`` whose opacity rises with the value (``_opacity``)."""
    heat = np.clip(np.nan_to_num(heat.astype(np.float32)) / top, 0, 1)
    rgba = matplotlib.colormaps["inferno"](heat)
    rgba[..., 3] = _opacity(heat)
    return rgba


def _colour_bar(fig: Figure, axes: np.ndarray, top: float, scaling: str) -> None:
    """The maps' colour bar (colour and opacity as drawn over black), labelled with how the maps are scaled."""
    values = np.linspace(0, 1, 256)
    rgba = matplotlib.colormaps["inferno"](values)
    rgba[:, :3] *= _opacity(values)[:, None]  # drawn over a black CT: what each value looks like
    colours = matplotlib.colors.ListedColormap(rgba[:, :3])
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, top), colours),
                       ax=list(axes[:, 3:].ravel()), fraction=0.05, pad=0.02, shrink=min(1.0, 0.4 + 0.15 * len(axes)))
    bar.set_label(SCALING_TEXT.get(scaling, (scaling, ""))[0], fontsize=7)
    bar.ax.tick_params(labelsize=7)


def write_panel(path: str | os.PathLike, ct: np.ndarray, segment: np.ndarray, mask: np.ndarray,
                maps: dict[str, np.ndarray], slices: list[int], *, title: str = "",
                aspect: float = 1.0, row_labels: list[str] | None = None, scaling: str = "volume") -> Path:
    """Write a grid: one row per slice; columns CT, segment, M, then one per map; a colour bar for the maps.

    Args:
        path: The PNG to write (atomically: temporary name, then rename).
        ct: HU (s, r, c).
        segment: Bool (s, r, c), drawn as a contour/overlay on the CT.
        mask: Pixel set M, bool (s, r, c).
        maps: Column title -> map (s, r, c), drawn over the CT with inferno.
        slices: Rows to show.
        title: Figure title.
        aspect: Row spacing / column spacing, so anatomy is not stretched.
        row_labels: Each row's label (default "slice <index>").
        scaling: How the maps were normalised (a key of ``cam.vocabulary.NORMALIZATIONS``): "volume" and
            "slice" maps are drawn from 0 to 1; "none" (raw values) from 0 to the largest value shown.
            The colour bar and the title say which.

    Returns:
        The path written.
    """
    path = Path(path)
    columns = ["CT", "segment", "M (pixel set)", *maps]
    row_labels = row_labels or [f"slice {s}" for s in slices]
    top = 1.0
    if scaling == "none" and maps:
        top = max(float(np.nan_to_num(heat[slices]).max()) for heat in maps.values()) or 1.0
    fig = Figure(figsize=(2.3 * len(columns) + 1.0, 2.3 * len(slices) + 1.0), layout="constrained")  # no pyplot
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
                ax.imshow(_heat_rgba(maps[name][s], top), aspect=aspect, interpolation="bilinear")
                if segment[s].any():
                    ax.contour(segment[s], levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:
                ax.set_ylabel(row_labels[row], fontsize=8)
    if maps:
        _colour_bar(fig, axes, top, scaling)
    scale = f"; maps: {SCALING_TEXT[scaling][1]}" if maps and scaling in SCALING_TEXT else ""
    fig.suptitle(title + f"\n(axial, anterior up, patient's right on the image left; cyan: segment outline{scale})",
                 fontsize=9)
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=90)
    return path
