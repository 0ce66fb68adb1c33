"""Sanity checks after Adebayo et al. (2018): cascading randomisation of the model's weights.

Weights are re-initialised stage by stage from the head downwards, on a deep copy of the model
(the caller's model is never touched); after each stage the maps are computed again and compared
with the original maps by Spearman rank correlation. A map that depends on the weights must
change once they are random.

Arrays: x (B, C, H, W) tensor, m (B, H, W) bool tensor, maps (B, H, W) as ``explain_slices`` gives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from seghirescam.cam.engine import explain_slices
from seghirescam.cam.methods import CAMMethod
from seghirescam.models.unet import UNet2D

__all__ = ["randomisation_stages", "randomise_modules", "cascading_randomisation", "randomised_maps", "spearman",
           "sanity_stages"]

MapKey = tuple[str, str]


def randomisation_stages(model: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """The cascade's stages from the output downwards: (stage name, submodule names).

    For ``UNet2D``: head, dec1 (with up1), dec2 (with up2), ..., bottleneck, enc{depth}, ..., enc1.
    Otherwise: the model's direct children that hold parameters, last registered first.
    """
    if isinstance(model, UNet2D):
        levels = range(1, model.depth + 1)
        return ([("head", ("head",))] + [(f"dec{i}", (f"up{i}", f"dec{i}")) for i in levels]
                + [("bottleneck", ("bottleneck",))] + [(f"enc{i}", (f"enc{i}",)) for i in reversed(levels)])
    children = [(name, (name,)) for name, child in model.named_children() if any(True for _ in child.parameters())]
    return children[::-1]


def randomise_modules(model: nn.Module, names: Sequence[str], seed: int) -> None:
    """Re-initialise, in place, every submodule of the named modules that can reset itself.

    Batch-norm layers get fresh affine parameters and running statistics. The global RNG state
    is left as it was (a forked, seeded generator draws the weights).

    Args:
        model: The model to change (pass a copy to keep the original).
        names: Names from ``model.named_modules()``.
        seed: Seed of the new weights.

    Raises:
        ValueError: If a name is not a submodule, or a named module has nothing to reset.
    """
    modules = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            if name not in modules:
                raise ValueError(f"cannot randomise {name!r}: no such submodule")
            resettable = [sub for sub in modules[name].modules() if hasattr(sub, "reset_parameters")]
            if not resettable:
                raise ValueError(f"cannot randomise {name!r}: none of its submodules has reset_parameters()")
            for sub in resettable:
                sub.reset_parameters()
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.reset_running_stats()


def cascading_randomisation(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int, *,
                            layers: Sequence[str], methods: Sequence[str | CAMMethod], seed: int = 0,
                            stages: list[tuple[str, tuple[str, ...]]] | None = None
                            ) -> dict[str, dict[MapKey, torch.Tensor]]:
    """Maps after each cumulative randomisation stage, on a deep copy of the model.

    Args:
        model: The model (left untouched).
        x, m, target_class, layers, methods: As for ``explain_slices``.
        seed: Seeds the new weights (stage i uses seed + i).
        stages: Default ``randomisation_stages(model)``.

    Returns:
        {stage name: {(method, layer): maps (B, H, W)}}, stages in cascade order; the maps of stage
        s come from a model whose stages up to and including s are random.
    """
    work = copy.deepcopy(model)
    result = {}
    for index, (stage, names) in enumerate(stages or randomisation_stages(model)):
        randomise_modules(work, names, seed + index)
        result[stage] = explain_slices(work, x, m, target_class, layers=layers, methods=methods)
    return result


def sanity_stages(stages: list[tuple[str, tuple[str, ...]]], layers: Sequence[str]) -> dict[str, str | None]:
    """The stages the evaluation reads: the head, each layer's own stage, the last (everything random).

    Returns:
        {"head": name, "layer:<layer>": name or None (the layer is in no stage), "all": name}.
    """
    names = [name for name, _ in stages]
    wanted: dict[str, str | None] = {"head": names[0], "all": names[-1]}
    for layer in layers:
        wanted[f"layer:{layer}"] = next((n for n, modules in stages
                                         if any(layer == mod or layer.startswith(mod + ".") for mod in modules)), None)
    return wanted


def randomised_maps(model: nn.Module, explain: Callable[[nn.Module], dict[MapKey, torch.Tensor]], *,
                    stages: list[tuple[str, tuple[str, ...]]], keep: Sequence[str], seed: int
                    ) -> dict[str, dict[MapKey, torch.Tensor]]:
    """Maps after cumulative randomisation, computed only at the stages in ``keep`` (the cascade still runs
    through every stage).

    Args:
        model: The model (left untouched; a deep copy is randomised).
        explain: Maps of a model, e.g. ``lambda net: explain_slices(net, x, m, c, ...)``.
        stages: The cascade (``randomisation_stages``).
        keep: Stage names whose maps are wanted.
        seed: Seeds the weights (stage i uses seed + i): different seeds, independent re-initialisations.

    Returns:
        {stage: maps} for the stages in ``keep``, in cascade order.
    """
    work = copy.deepcopy(model)
    result = {}
    last = max(index for index, (name, _) in enumerate(stages) if name in keep) if keep else -1
    for index, (stage, names) in enumerate(stages[: last + 1]):
        randomise_modules(work, names, seed + index)
        if stage in keep:
            result[stage] = explain(work)
    return result


def spearman(a: np.ndarray, b: np.ndarray, *, support_only: bool = False) -> float:
    """Spearman rank correlation of two maps (ties get average ranks).

    Over all pixels, two sparse maps that are both zero on most of the slice correlate highly
    whatever they do where they are not zero: the shared zeros dominate the ranks. With
    ``support_only`` only the pixels where either map is non-zero count.

    Args:
        a, b: Maps of the same size (any shape), >= 0 for ``support_only``.
        support_only: Rank only the union of the two maps' supports.

    Returns:
        The correlation. If exactly one map is constant (e.g. a map that randomisation turned to
        zero), no rank information is shared: 0. If both are constant: NaN.

    Raises:
        ValueError: If the maps have different sizes.
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"maps of different sizes: {a.size} and {b.size}")
    if support_only:
        support = (a != 0) | (b != 0)
        a, b = a[support], b[support]
        if a.size < 2:
            return float("nan")
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return float("nan") if flat_a and flat_b else 0.0
    return float(stats.spearmanr(a, b).statistic)
