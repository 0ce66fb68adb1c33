"""What every part of the package needs to know about a CAM method, without torch.

The registry of methods is one dict, ``METHOD_INFO`` (key -> ``MethodInfo``). The formulas live in
``seghirescam.cam.methods`` (torch), whose ``CAMMethod`` is a ``MethodInfo`` with a ``combine``
function and whose ``register_method`` adds to this dict as well as to ``methods.METHODS``. The
Slicer widget, the figures, the plots and the reports read this module, so they list every
registered method and import no torch.

Example:
    >>> from seghirescam.cam.method_info import display_name, method_keys
    >>> "seg-hires-grad-cam" in method_keys()
    True
    >>> display_name("seg-grad-cam")
    'Seg-Grad CAM'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PlotStyle", "MethodInfo", "METHOD_INFO", "DEFAULT_METHOD_KEYS", "COSTS", "registered_methods", "method_keys",
           "method_info", "display_name", "short_title", "plot_style", "format_method_keys", "parse_method_keys"]


@dataclass(frozen=True)
class PlotStyle:
    """How a method's curves are drawn (matplotlib).

    Attributes:
        colour: A matplotlib colour, e.g. "tab:red" or "0.5".
        line_style: A matplotlib line style, e.g. "-", "--", ":" or "-.".
    """

    colour: str
    line_style: str = "-"

    def matplotlib_kwargs(self) -> dict[str, str]:
        """Returns: {"color": ..., "linestyle": ...} for ``Axes.plot``."""
        return {"color": self.colour, "linestyle": self.line_style}


@dataclass(frozen=True, kw_only=True)
class MethodInfo:
    """A CAM method as the rest of the package sees it.

    Attributes:
        key: The name its maps are returned, stored and written under, e.g. "seg-hires-grad-cam".
        display_name: For people: GUI labels, panel titles, legends, e.g. "Seg-HiRes-Grad CAM".
        short_title: For narrow places, tables and plots, e.g. "Seg-HiRes".
        style: How its curves are drawn.
        citation: Short source, e.g. "Rheude et al. 2024, MELBA".
        description: One line for tooltips and help texts.
        cost: What a map costs beyond the prediction: "gradient" (from the engine's one shared forward
            and backward), "forward" (one or two extra passes of the network per batch) or
            "perturbation" (one extra forward per channel of the layer and per slice holding M).
        class_agnostic: True if the map depends neither on the class nor on M (Eigen-CAM).
    """

    key: str
    display_name: str
    short_title: str
    style: PlotStyle
    citation: str
    description: str
    cost: str = "gradient"
    class_agnostic: bool = False

    @property
    def name(self) -> str:
        """The key (the name used before keys had metadata)."""
        return self.key


_BUILT_IN = (
    MethodInfo(key="seg-grad-cam", display_name="Seg-Grad CAM", short_title="Seg-Grad",
               style=PlotStyle("tab:blue"), citation="Vinogradova et al. 2020, AAAI",
               description="Channel-averaged gradient x activation (smoother, may spread outside the organ)."),
    MethodInfo(key="seg-hires-grad-cam", display_name="Seg-HiRes-Grad CAM", short_title="Seg-HiRes",
               style=PlotStyle("tab:red"), citation="Rheude et al. 2024, MELBA",
               description="Gradient x activation, element-wise, no averaging (faithful)."),
    MethodInfo(key="seg-xres-cam", display_name="Seg-XRes CAM", short_title="Seg-XRes",
               style=PlotStyle("tab:green"), citation="Hasany et al. 2023",
               description="Gradient max-pooled over 2x2 windows x activation."),
    MethodInfo(key="seg-cam", display_name="Seg-CAM", short_title="CAM", style=PlotStyle("tab:brown"),
               citation="Zhou et al. 2016, CVPR", cost="forward",
               description="Head weights x activation: only at a layer feeding a linear 1x1 head (the logit map minus bias)."),
    MethodInfo(key="seg-grad-cam-pp", display_name="Seg-Grad CAM++", short_title="Grad++",
               style=PlotStyle("navy", "--"), citation="Chattopadhyay et al. 2018, WACV",
               description="Channel weights from the closed-form alpha (exp-output identity, eps 1e-6: depends on the scale of y_M)."),
    MethodInfo(key="seg-xgrad-cam", display_name="Seg-XGrad CAM", short_title="XGrad",
               style=PlotStyle("tab:cyan"), citation="Fu et al. 2020, BMVC",
               description="Channel weights sum(A x G) / sum(A)."),
    MethodInfo(key="seg-layer-cam", display_name="Seg-Layer CAM", short_title="Layer",
               style=PlotStyle("tab:pink"), citation="Jiang et al. 2021, IEEE TIP",
               description="ReLU(G) x activation, element-wise."),
    MethodInfo(key="seg-eigen-cam", display_name="Seg-Eigen CAM", short_title="Eigen",
               style=PlotStyle("tab:olive"), citation="Muhammad & Yeasin 2020, IJCNN", class_agnostic=True,
               description="First principal component of the activations: class-agnostic, ignores the class and M."),
    MethodInfo(key="seg-eigengrad-cam", display_name="Seg-EigenGrad CAM", short_title="EigenGrad",
               style=PlotStyle("darkolivegreen", "--"), citation="pytorch-grad-cam (Gildenblat et al.)",
               description="First principal component of gradient x activation."),
    MethodInfo(key="seg-ablation-cam", display_name="Seg-Ablation CAM", short_title="Ablation",
               style=PlotStyle("indigo", "-."), citation="Desai & Ramaswamy 2020, WACV", cost="perturbation",
               description="Channel weights: relative drop of y_M when the channel is zeroed (one forward per channel)."),
    MethodInfo(key="seg-score-cam", display_name="Seg-Score CAM", short_title="Score",
               style=PlotStyle("darkmagenta", "-."), citation="Wang et al. 2020, CVPRW", cost="perturbation",
               description="Channel weights: y_M of the input masked by the channel (one forward per channel, no softmax)."),
    MethodInfo(key="seg-fullgrad", display_name="Seg-FullGrad", short_title="FullGrad",
               style=PlotStyle("tab:gray"), citation="Srinivas & Fleuret 2019, NeurIPS", cost="forward",
               description="|input x gradient| plus |bias x gradient| of every conv/norm layer (ignores the layer choice)."),
    MethodInfo(key="seg-lift-cam", display_name="Seg-LIFT CAM", short_title="LIFT",
               style=PlotStyle("goldenrod"), citation="Jung & Oh 2021, ICCV", cost="forward",
               description="Channel weights: DeepLIFT contributions (Rescale rule, zero reference at the layer)."),
)

METHOD_INFO: dict[str, MethodInfo] = {info.key: info for info in _BUILT_IN}
"""The registry: key -> metadata, in registration order. Change it only through
``seghirescam.cam.methods.register_method`` / ``unregister_method``."""

DEFAULT_METHOD_KEYS = ("seg-hires-grad-cam", "seg-grad-cam")
"""The methods run (and ticked in the GUI) when none are chosen."""

COSTS = ("gradient", "forward", "perturbation")
"""``MethodInfo.cost`` values, cheapest first."""

KEY_SEPARATOR = ","


def registered_methods() -> tuple[MethodInfo, ...]:
    """Returns: every registered method's metadata, in registration order."""
    return tuple(METHOD_INFO.values())


def method_keys() -> tuple[str, ...]:
    """Returns: every registered method's key, in registration order."""
    return tuple(METHOD_INFO)


def method_info(key: str) -> MethodInfo:
    """The metadata of a registered method.

    Args:
        key: A method key, e.g. "seg-grad-cam".

    Returns:
        Its ``MethodInfo``.

    Raises:
        ValueError: For an unknown key (the message lists the known ones).
    """
    try:
        return METHOD_INFO[key]
    except KeyError:
        raise ValueError(f"unknown CAM method {key!r}; known methods: {', '.join(METHOD_INFO)}") from None


def display_name(key: str) -> str:
    """Returns: the registered method's display name, or the key itself for anything else
    (a configured variant that was never registered, a reference map)."""
    found = METHOD_INFO.get(key)
    return found.display_name if found is not None else key


def short_title(key: str) -> str:
    """Returns: the registered method's short title, or the key itself for anything else."""
    found = METHOD_INFO.get(key)
    return found.short_title if found is not None else key


def plot_style(key: str) -> PlotStyle | None:
    """Returns: the registered method's plot style, or None for anything else."""
    found = METHOD_INFO.get(key)
    return found.style if found is not None else None


def format_method_keys(keys: Iterable[str]) -> str:
    """Join method keys into one string (as kept in Slicer's parameter node).

    Args:
        keys: Method keys; none may contain the separator ",".

    Returns:
        "key1,key2,...".

    Raises:
        ValueError: If a key contains ",".
    """
    keys = list(keys)
    bad = [key for key in keys if KEY_SEPARATOR in key]
    if bad:
        raise ValueError(f"method keys cannot contain {KEY_SEPARATOR!r}: {bad}")
    return KEY_SEPARATOR.join(keys)


def parse_method_keys(text: str) -> tuple[str, ...]:
    """Split a string made by ``format_method_keys``; blanks are dropped, order and unknown keys are kept.

    Args:
        text: "key1,key2,...".

    Returns:
        The keys.
    """
    return tuple(word.strip() for word in text.split(KEY_SEPARATOR) if word.strip())
