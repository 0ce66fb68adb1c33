"""Plots of the faithfulness evaluation: mean deletion/insertion curves, and Spearman under randomisation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seghirescam.atomic import atomic_path
from seghirescam.evaluation.labels import is_reference, legend_label, ordered_methods, ordered_series, series_styles

__all__ = ["plot_curves", "plot_sanity", "curves_figure", "sanity_figure", "legend_texts"]

_PANELS = (("road", "deletion"), ("road", "insertion"), ("blur", "deletion"), ("blur", "insertion"),
           ("mean", "deletion"), ("mean", "insertion"))
_FILL_TITLES = {"road": "ROAD imputation", "blur": "blurred fill", "mean": "tissue-mean fill"}
_MODE_TITLES = {("road", "deletion"): "MoRF", ("road", "insertion"): "LeRF (as insertion)"}
_NO_LAYER = "-"  # the layer of a reference map (runner.NO_LAYER)


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure drawn by Agg without pyplot, so no global matplotlib backend is selected or needed."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=80)
    return path


def legend_texts(fig: Figure) -> list[str]:
    """Returns: the texts of the figure-level legends, in order (what a reader sees under the panels)."""
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def plot_curves(path: str | os.PathLike, curves: dict[tuple[str, str, str, str, str], np.ndarray],
                fractions: np.ndarray, layer: str, groups: Sequence[str], *, title: str = "") -> Path:
    """Write ``curves_figure`` as a PNG (atomically).

    Args:
        path: The PNG to write.
        curves, fractions, layer, groups, title: As for ``curves_figure``.

    Returns:
        The path written.
    """
    return _save(curves_figure(curves, fractions, layer, groups, title=title), Path(path))


def curves_figure(curves: dict[tuple[str, str, str, str, str], np.ndarray], fractions: np.ndarray, layer: str,
                  groups: Sequence[str], *, title: str = "") -> Figure:
    """Mean normalized curves: one row per group, columns deletion/insertion x each fill measured (ROAD, blur,
    tissue mean).

    Every CAM method found in ``curves`` is drawn (registered ones with their registered label and
    style), then the references.

    Args:
        curves: {(group, method, layer, fill, mode): (n, F) normalized curves}; references have layer "-".
        fractions: (F,) the x axis.
        layer: The CAM layer drawn (references are drawn in every panel).
        groups: Row order.
        title: Figure title.

    Returns:
        The figure (Agg canvas, no pyplot).
    """
    series = ordered_series(key[1] for key in curves)
    styles = series_styles(series)
    fills = {key[3] for key in curves}
    panels = [panel for panel in _PANELS if panel[0] in fills] or list(_PANELS[:2])  # the fills measured
    fig = _new_figure((3.1 * max(len(panels), 4), 2.5 * len(groups) + 0.9))
    # Same limits on every panel, set per axis: shared axes make matplotlib's layout quadratic in the panels
    # (minutes for 6 groups x 6 panels)
    axes = fig.subplots(len(groups), len(panels), squeeze=False)
    for row, group in enumerate(groups):
        for col, (fill, mode) in enumerate(panels):
            ax = axes[row, col]
            for method in series:
                reference = is_reference(method)
                stack = curves.get((group, method, _NO_LAYER if reference else layer, fill, mode))
                if stack is None or not len(stack):
                    continue
                ax.plot(100 * fractions, np.nanmean(stack, 0), label=legend_label(method),
                        lw=1.1 if reference else 1.6, **styles[method].matplotlib_kwargs())
            if not ax.lines:
                measured = any(k[0] == group and k[3:] == (fill, mode) for k in curves)
                ax.text(0.5, 0.5, "no slice with y_0 > y_100%" if measured else "not measured for this M",
                        ha="center", transform=ax.transAxes, fontsize=8)
            ax.axhline(0, color="0.85", lw=0.6)
            ax.set_xlim(0, 100)
            ax.set_ylim(-0.3, 1.3)
            ax.grid(alpha=0.3)
            ax.tick_params(labelbottom=row == len(groups) - 1, labelleft=col == 0, labelsize=8)
            if row == 0:
                ax.set_title(f"{_MODE_TITLES.get((fill, mode), mode)}, {_FILL_TITLES[fill]}", fontsize=9)
            if col == 0:
                counts = [len(v) for k, v in curves.items() if k[0] == group and k[3:] == (fill, mode)]
                wrapped = group.replace(", ", ",\n")  # "kidney (real CT),\nM = model prediction"
                ax.set_ylabel(f"{wrapped}, n={max(counts, default=0)}", fontsize=8)
            if row == len(groups) - 1:
                ax.set_xlabel("% of slice pixels removed / inserted", fontsize=8)
    legend = {}
    for ax in axes.ravel():
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=8, fontsize=8, frameon=False)
    fig.suptitle(title or f"Deletion / insertion at {layer}: mean of (y_M - y_100%) / (y_0 - y_100%) over slices",
                 fontsize=10)
    fig.tight_layout(rect=(0.02, 0.08, 1, 1))
    return fig


def plot_sanity(path: str | os.PathLike, sanity: dict[tuple[str, str, str], dict[str, list[float]]],
                stages: Sequence[str], layers: Sequence[str], *, title: str = "") -> Path:
    """Write ``sanity_figure`` as a PNG (atomically).

    Args:
        path: The PNG to write.
        sanity, stages, layers, title: As for ``sanity_figure``.

    Returns:
        The path written.
    """
    return _save(sanity_figure(sanity, stages, layers, title=title), Path(path))


def sanity_figure(sanity: dict[tuple[str, str, str], dict[str, list[float]]], stages: Sequence[str],
                  layers: Sequence[str], *, title: str = "") -> Figure:
    """Mean |Spearman| with the original map after each cumulative randomisation stage, one panel per layer.

    Args:
        sanity: {(method, layer, pixels): {stage: values}}, pixels "support" (drawn solid) or "all"
            (dashed); values per slice (n,), or per draw and slice (draws, n): then the bar spans the
            spread (standard deviation) of the draws' means. Every CAM method found is drawn.
        stages: The cascade's stage names, head first.
        layers: One panel each.
        title: Figure title.

    Returns:
        The figure (Agg canvas, no pyplot).
    """
    methods = ordered_methods(key[0] for key in sanity)
    styles = series_styles(methods)
    fig = _new_figure((3.6 * len(layers), 5.6))
    axes = fig.subplots(1, len(layers), squeeze=False, sharey=True)
    for ax, layer in zip(axes[0], layers):
        for method in methods:
            label, colour = legend_label(method), styles[method].colour
            for pixels, dash in (("support", "-"), ("all", "--")):
                per_stage = sanity.get((method, layer, pixels))
                if per_stage is None:
                    continue
                found = [np.asarray(per_stage.get(s, [np.nan]), dtype=float) for s in stages]
                means = [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in found]
                spread = [np.nanstd(np.nanmean(v, axis=-1)) if v.ndim == 2 and np.isfinite(v).any() else 0.0
                          for v in found]
                ax.errorbar(range(len(stages)), means, yerr=spread, fmt=dash, marker="o" if pixels == "support"
                            else None, ms=3, color=colour, lw=1.5 if pixels == "support" else 0.9, capsize=2,
                            label=f"{label}, {'on support' if pixels == 'support' else 'all pixels'}")
        ax.axhline(0, color="0.8", lw=0.6)
        ax.set_xticks(range(len(stages)), stages, rotation=60, fontsize=7)
        ax.set_title(f"maps at {layer}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("|Spearman ρ| with the original map", fontsize=8)
    legend = {}  # every panel's entries, so a method drawn only at some layers is still named
    for ax in axes.ravel():
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(title or "Cascading randomisation (weights re-initialised from the head down, cumulative; "
                 "bars: spread over the draws)", fontsize=10)
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    return fig
