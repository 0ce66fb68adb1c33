"""Which method runs at which layer, what it costs per slice, and which slices it sees: checked once per model.

Every registered method is tried at every explained layer on a small probe batch before the first
case. A method that refuses a layer (e.g. CAM, defined only at the layer feeding a linear 1x1
head) raises ``ValueError``: the pair is kept as "n/a" with the method's own reason and never
run again. The probe also times each method alone; methods costing more than
Methods whose registry cost is in ``EvaluationConfig.expensive_costs`` (by default the perturbation
methods: Ablation-CAM, Score-CAM run one forward per channel) are evaluated on a seeded subsample of
each target's slices, so the run keeps its time budget whatever the registry holds. The choice reads
the registry, not the probe's timing: timings vary from run to run, and the tables must not.

Arrays: x (B, C, H, W), m (B, H, W) bool tensors; maps (B, H, W).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from seghirescam.cam.engine import explain_slices
from seghirescam.cam.method_info import method_info

__all__ = ["MethodPlan", "plan_methods", "probe_pairs", "explain_planned"]

MapKey = tuple[str, str]


@dataclass
class MethodPlan:
    """The outcome of the probe.

    Attributes:
        layers: The explained layers, in order.
        methods: Every method, in order.
        refused: {(method, layer): the method's reason}.
        seconds_per_slice: {method: seconds per slice over its accepted layers (probe, this machine)}.
        expensive: Methods evaluated on a subsample of slices.
    """

    layers: tuple[str, ...]
    methods: tuple[str, ...]
    refused: dict[MapKey, str] = field(default_factory=dict)
    seconds_per_slice: dict[str, float] = field(default_factory=dict)
    expensive: tuple[str, ...] = ()

    def accepted_layers(self, method: str) -> tuple[str, ...]:
        """Returns: the layers the method accepts, in order."""
        return tuple(layer for layer in self.layers if (method, layer) not in self.refused)

    def keys(self, methods: Sequence[str] | None = None) -> list[MapKey]:
        """Returns: every accepted (method, layer) of ``methods`` (default all), method-major."""
        return [(method, layer) for method in (methods or self.methods) for layer in self.accepted_layers(method)]

    def cheap(self) -> tuple[str, ...]:
        """Returns: the methods run on every slice."""
        return tuple(method for method in self.methods if method not in self.expensive)

    def to_json(self) -> dict:
        """Returns: a JSON-able record."""
        return {"refused": {f"{method}|{layer}": reason for (method, layer), reason in self.refused.items()},
                "seconds_per_slice": {k: round(v, 4) for k, v in self.seconds_per_slice.items()},
                "expensive": list(self.expensive)}


def probe_pairs(run: Callable[[tuple[str, ...], tuple[str, ...]], object], layers: Sequence[str],
                methods: Sequence[str], *, per: int = 1) -> MethodPlan:
    """Try every (method, layer) with ``run(layers, methods)``; a ``ValueError`` is that pair's refusal.

    Args:
        run: Explains the given layers with the given methods (its result is ignored).
        layers, methods: What to probe.
        per: Divides each method's time (e.g. the probe's number of slices).

    Returns:
        The plan's refusals and times (nothing marked expensive).
    """
    plan = MethodPlan(tuple(layers), tuple(methods))
    for method in methods:
        seconds = 0.0
        for layer in layers:
            started = time.perf_counter()
            try:
                run((layer,), (method,))
            except ValueError as error:
                plan.refused[(method, layer)] = str(error)
                continue
            seconds += time.perf_counter() - started
        plan.seconds_per_slice[method] = seconds / per
    return plan


def plan_methods(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int, *, layers: Sequence[str],
                 methods: Sequence[str], expensive_costs: Sequence[str]) -> MethodPlan:
    """Probe every (method, layer) once on a small batch.

    Args:
        model: The network.
        x, m, target_class: A probe batch (a few slices holding M).
        layers, methods: What the evaluation explains.
        expensive_costs: Registry costs (``MethodInfo.cost``) of the methods evaluated on a subsample.

    Returns:
        The plan.
    """
    try:  # warm-up, so the first method's time is not the start-up's
        explain_slices(model, x[:1], m[:1], target_class, layers=tuple(layers)[-1:], methods=tuple(methods)[:1])
    except ValueError:
        pass
    plan = probe_pairs(lambda ls, ms: explain_slices(model, x, m, target_class, layers=ls, methods=ms), layers,
                       methods, per=len(x))
    plan.expensive = tuple(method for method in methods if method_info(method).cost in expensive_costs)
    return plan


def explain_planned(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int, plan: MethodPlan,
                    methods: Sequence[str]) -> dict[MapKey, torch.Tensor]:
    """Maps of ``methods`` at their accepted layers: one ``explain_slices`` call per set of accepted layers.

    Returns:
        {(method, layer): (B, H, W)} for every accepted pair.
    """
    by_layers: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for method in methods:
        accepted = plan.accepted_layers(method)
        if accepted:
            by_layers[accepted].append(method)
    maps: dict[MapKey, torch.Tensor] = {}
    for accepted, group in by_layers.items():
        try:
            maps.update(explain_slices(model, x, m, target_class, layers=accepted, methods=tuple(group)))
        except RuntimeError:
            # The engine upsamples a layer's maps together and cannot stack maps of different sizes (e.g.
            # FullGrad's input-resolution map beside layer-resolution ones, main at 2959aae): one call each.
            for method in group:
                maps.update(explain_slices(model, x, m, target_class, layers=accepted, methods=(method,)))
    return maps
