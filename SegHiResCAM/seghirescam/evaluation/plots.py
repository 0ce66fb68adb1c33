"""Plots of the faithfulness evaluation: mean deletion/insertion curves, and Spearman under randomisation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_curves", "plot_sanity"]

_STYLE = {"seg-hires-grad-cam": ("Seg-HiRes-Grad CAM", "tab:red", "-"),
          "seg-grad-cam": ("Seg-Grad CAM", "tab:blue", "-"), "seg-xres-cam": ("Seg-XRes CAM", "tab:green", "-"),
          "random": ("random map", "0.5", ":"), "M": ("M itself", "black", "--"),
          "centre-distance": ("centre distance", "tab:purple", "-.")}
_PANELS = (("blur", "deletion"), ("blur", "insertion"), ("mean", "deletion"), ("mean", "insertion"))


def _save(fig: plt.Figure, path: Path) -> Path:
    temporary = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(temporary, dpi=80)
    plt.close(fig)
    os.replace(temporary, path)
    return path


def plot_curves(path: str | os.PathLike, curves: dict[tuple[str, str, str, str, str], np.ndarray],
                fractions: np.ndarray, layer: str, groups: Sequence[str], *, title: str = "") -> Path:
    """Mean normalised curves: one row per group, columns deletion/insertion x blur/tissue-mean fill.

    Args:
        path: The PNG to write (atomically).
        curves: {(group, method, layer, fill, mode): (n, F) normalised curves}; references have layer "-".
        fractions: (F,) the x axis.
        layer: The CAM layer drawn (references are drawn in every panel).
        groups: Row order.
        title: Figure title.

    Returns:
        The path written.
    """
    path = Path(path)
    fig, axes = plt.subplots(len(groups), len(_PANELS), figsize=(3.1 * len(_PANELS), 2.5 * len(groups) + 0.7),
                             squeeze=False, sharex=True, sharey=True)
    for row, group in enumerate(groups):
        for col, (fill, mode) in enumerate(_PANELS):
            ax = axes[row, col]
            for method, (label, colour, dash) in _STYLE.items():
                stack = curves.get((group, method, layer if method.startswith("seg-") else "-", fill, mode))
                if stack is None or not len(stack):
                    continue
                ax.plot(100 * fractions, np.nanmean(stack, 0), dash, color=colour, label=label,
                        lw=1.6 if method.startswith("seg-") else 1.1)
            if not ax.lines:
                ax.text(0.5, 0.5, "no slice with y_0 > y_100%", ha="center", transform=ax.transAxes, fontsize=8)
            ax.axhline(0, color="0.85", lw=0.6)
            ax.set_ylim(-0.3, 1.3)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{mode}, {'blurred' if fill == 'blur' else 'tissue-mean'} fill", fontsize=9)
            if col == 0:
                counts = [len(v) for k, v in curves.items() if k[0] == group and k[3:] == (fill, mode)]
                ax.set_ylabel(f"{group}, n={max(counts, default=0)}", fontsize=8)
            if row == len(groups) - 1:
                ax.set_xlabel("% of slice pixels removed / inserted", fontsize=8)
    legend = {}
    for ax in axes.ravel():
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(title or f"Deletion / insertion at {layer}: mean of (y_M - y_100%) / (y_0 - y_100%) over slices",
                 fontsize=10)
    fig.tight_layout(rect=(0.02, 0.05, 1, 1))
    return _save(fig, path)


def plot_sanity(path: str | os.PathLike, sanity: dict[tuple[str, str, str], dict[str, list[float]]],
                stages: Sequence[str], layers: Sequence[str], *, title: str = "") -> Path:
    """Mean Spearman with the original map after each cumulative randomisation stage, one panel per layer.

    Args:
        path: The PNG to write.
        sanity: {(method, layer, pixels): {stage: per-slice Spearman values}}, pixels "support" (drawn
            solid) or "all" (dashed).
        stages: The cascade's stage names, head first.
        layers: One panel each.
        title: Figure title.

    Returns:
        The path written.
    """
    path = Path(path)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.9), squeeze=False, sharey=True)
    for ax, layer in zip(axes[0], layers):
        for method, (label, colour, _) in _STYLE.items():
            for pixels, dash in (("support", "-"), ("all", "--")):
                per_stage = sanity.get((method, layer, pixels))
                if per_stage is None:
                    continue
                means = [np.nanmean(per_stage[s]) if np.isfinite(per_stage[s]).any() else np.nan for s in stages]
                ax.plot(range(len(stages)), means, dash, marker="o" if pixels == "support" else None, ms=3,
                        color=colour, lw=1.5 if pixels == "support" else 0.9,
                        label=f"{label}, {'on support' if pixels == 'support' else 'all pixels'}")
        ax.axhline(0, color="0.8", lw=0.6)
        ax.set_xticks(range(len(stages)), stages, rotation=60, fontsize=7)
        ax.set_title(f"maps at {layer}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("Spearman ρ with the original map", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title or "Cascading randomisation (weights re-initialised from the head down, cumulative)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return _save(fig, path)
