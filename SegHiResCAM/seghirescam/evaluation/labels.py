"""Names, order and styles of what the evaluation compares: the CAM methods (from the registry) and the references.

A row's "method" is either a CAM method's key or a reference map's key ("random", "M",
"centre-distance"). Tables and plots list every CAM method found in the results: registered ones
in registration order with their registered titles and styles, then any other key (a configured
variant, e.g. ``seg_xres_cam(3, "mean")``) under its key and a colour of its own. No method is
dropped because nobody listed it here. No torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from seghirescam.cam.method_info import METHOD_INFO, PlotStyle, display_name, plot_style, short_title

__all__ = ["Reference", "REFERENCE_LABELS", "BASELINE", "RF_BOUND", "DISC", "is_reference", "ordered_methods", "ordered_series",
           "legend_label", "table_label", "series_styles"]


@dataclass(frozen=True)
class Reference:
    """A reference map of the evaluation (not a CAM method).

    Attributes:
        legend: Label in plot legends.
        table: Label in tables.
        style: How its curves are drawn.
    """

    legend: str
    table: str
    style: PlotStyle


REFERENCE_LABELS: dict[str, Reference] = {
    "random": Reference("random map", "ref: random", PlotStyle("0.5", ":")),
    "M": Reference("M itself", "ref: M itself", PlotStyle("black", "--")),
    "centre-distance": Reference("centre-distance disc", "ref: centre disc", PlotStyle("tab:purple", "-.")),
    "rf-bound": Reference("receptive bound (uniform)", "ref: RF bound", PlotStyle("tab:olive", ":")),
}
"""The reference maps: ``cases.reference_maps`` gives the first three (no layer); "rf-bound" is, per layer,
the uniform map on the layer's receptive bound (``receptive.receptive_bounds``), the control for
localisation wins that the architecture makes."""

RF_BOUND = "rf-bound"
DISC = "centre-distance"
"""The control every method must beat: closeness to M's centre (model-free)."""

BASELINE = "seg-hires-grad-cam"
"""The method every other CAM method is counted against, slice by slice."""

# Colours for methods without a registered style; then matplotlib's cycle "C0", "C1", ...
_SPARE_COLOURS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def is_reference(series: str) -> bool:
    """Returns: whether ``series`` (a row's "method") is a reference map rather than a CAM method."""
    return series in REFERENCE_LABELS


def ordered_methods(present: Iterable[str]) -> list[str]:
    """The CAM methods among ``present``: registered ones in registration order, then the others as first seen.

    Args:
        present: Row "method" values (CAM method keys and reference keys, repeats allowed).

    Returns:
        Each CAM method once; references left out.
    """
    present = [s for s in dict.fromkeys(present) if not is_reference(s)]
    registered = [key for key in METHOD_INFO if key in present]
    return registered + [key for key in present if key not in METHOD_INFO]


def ordered_series(present: Iterable[str]) -> list[str]:
    """Returns: ``ordered_methods(present)`` followed by the references found in ``present``."""
    present = list(dict.fromkeys(present))
    return ordered_methods(present) + [key for key in REFERENCE_LABELS if key in present]


def legend_label(series: str) -> str:
    """Returns: the label a plot legend shows: a method's display name, a reference's legend text, else the key."""
    reference = REFERENCE_LABELS.get(series)
    return reference.legend if reference is not None else display_name(series)


def table_label(series: str) -> str:
    """Returns: the label a table shows: a method's short title, "ref: ..." for a reference, else the key."""
    reference = REFERENCE_LABELS.get(series)
    return reference.table if reference is not None else short_title(series)


def series_styles(series: Iterable[str]) -> dict[str, PlotStyle]:
    """How to draw each series.

    Args:
        series: Method and reference keys, in drawing order.

    Returns:
        {key: style}: the registered style, the reference's style, or else (a key nobody registered)
        a spare colour no other series in ``series`` uses, with a solid line.
    """
    keys = list(dict.fromkeys(series))
    known = {key: REFERENCE_LABELS[key].style if is_reference(key) else plot_style(key) for key in keys}
    taken = {style.colour for style in known.values() if style is not None}
    spare = (colour for colour in [*_SPARE_COLOURS, *(f"C{n}" for n in range(10 * len(keys) + 10))]
             if colour not in taken)
    return {key: style if style is not None else PlotStyle(next(spare)) for key, style in known.items()}
