"""The words users choose from: pixel sets, normalize modes and precisions, each key with a display label and help.

The one definition; the engine, the pipeline, the command line, the Logic and the Slicer widget
read it. Plain data without torch or numpy, so the Slicer module can fill its menus before
torch is installed.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Choice", "PIXEL_SETS", "FILE_PIXEL_SETS", "NORMALIZATIONS", "DEFAULT_NORMALIZATION", "DEFAULT_POINT_RADIUS",
           "PRECISIONS", "DEFAULT_PRECISION", "CLICK_MODES", "DEFAULT_CLICK_MODE", "help_text"]


class Choice(NamedTuple):
    """One choice of a menu: what the Slicer widget shows, and a one-line help."""

    label: str
    help: str


PIXEL_SETS: dict[str, Choice] = {
    "segment": Choice("Segment", "the voxels of the chosen segment"),
    "prediction": Choice("Model prediction", "the voxels the model itself labels as the target class"),
    "point": Choice("Markups point", "an in-plane disc around each point, on the point's own slice"),
    "slice": Choice("Current slice (Red view)", "every pixel of one axial slice"),
}
# A case given as files (``seghirescam explain``/``batch``) has no viewer, hence no current slice.
FILE_PIXEL_SETS: tuple[str, ...] = ("segment", "prediction", "point")
# Pixel set "point": M is an in-plane disc of this radius (pixels) around each point, on the point's own
# slice (2: 13 pixels, enough to be seen in a viewer and robust to a click one pixel off; 0: the voxel alone).
DEFAULT_POINT_RADIUS = 2

NORMALIZATIONS: dict[str, Choice] = {
    "volume": Choice("Per volume (max = 1)", "divide each map by its maximum over the volume"),
    "slice": Choice("Per slice", "divide each slice of a map by that slice's maximum"),
    "none": Choice("None (raw values)", "keep the raw CAM values"),
}
DEFAULT_NORMALIZATION = "volume"

# The network's arithmetic. "bf16" runs the forward under torch.autocast(bfloat16): a fast, approximate preview
# (measured deviation from fp32 in the README), refused where the hardware has no bfloat16.
PRECISIONS: dict[str, Choice] = {
    "fp32": Choice("float32 (exact)", "float32 throughout, the exact maps (default)"),
    "bf16": Choice("bfloat16 preview (approximate)",
                   "bfloat16 autocast: faster, approximate maps (a few percent of the max), for a preview; CUDA GPUs and "
                   "CPUs with bfloat16 in hardware (AVX512-BF16, AMX) only, refused elsewhere"),
}
DEFAULT_PRECISION = "fp32"

# Click to explain (``cam.interactive``, ``mrml.click``): what M becomes when the user clicks a pixel.
CLICK_MODES: dict[str, Choice] = {
    "pixel": Choice("Clicked pixel", "the clicked pixel alone"),
    "disc": Choice("Disc around the click", "an in-plane disc of the chosen radius (pixels) around the clicked pixel"),
    "component": Choice("Predicted region under the click",
                        "the connected region the model predicts as the target class under the click"),
}
DEFAULT_CLICK_MODE = "pixel"


def help_text(choices: dict[str, Choice], keys: tuple[str, ...] | None = None) -> str:
    """"key: help; key: help" for a command-line option's help (all keys, or ``keys``)."""
    return "; ".join(f"{key}: {choices[key].help}" for key in (keys or tuple(choices)))
