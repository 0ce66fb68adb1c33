"""The evaluation of models that prepare their own input (nnU-Net results folders, MONAI bundles), on the same cases.

Such a model is reached only through the explainable-model interface (``models.explainable``): it
takes a CT in HU with its geometry and gives labels (``predict_ct``) or CAMs (``explain_ct``) on the
CT's grid; its logits, its input frame and its layers' spatial reach stay inside it. So this path
measures what the interface allows, with the same cases, sources of M, controls and statistics
as the slice-wise evaluation:

- localisation of every map on every evaluated slice, against the random map, M itself and the
  centre-distance disc;
- deletion in the MoRF order with ROAD's noisy linear imputation in HU: the top x% of each
  evaluated slice's pixels (by the map) are imputed, the whole CT goes through the model's own
  prediction, and the Dice of the class near M is tracked (the model's logits are not exposed,
  so y_M curves, the randomisation check and the receptive bound are not measured here).

M spans all evaluated slices of a target at once (one y_M for the volume, as ``explain`` does);
maps are read per axial slice. Arrays are the targets' (s, r, c) display order, which is the
(k, j, i) order of a volume with identity direction (``cases.EvalTarget``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from seghirescam.evaluation.cases import EvalTarget, keep_touching, reference_maps
from seghirescam.evaluation.config import EvaluationConfig
from seghirescam.evaluation.faithfulness import curve_auc, rank_positions, uniform_fractions
from seghirescam.evaluation.localisation import dilate, localisation_metrics
from seghirescam.evaluation.plan import MethodPlan, probe_pairs
from seghirescam.evaluation.road import road_impute
from seghirescam.evaluation.writing import write_evaluation
from seghirescam.evaluation.runner import NO_LAYER, TargetResult, _rng, _select, _Rows, group_name, tqdm_bar
from seghirescam.imaging.geometry import Geometry
from seghirescam.imaging.volumes import Volume

__all__ = ["run_model_level", "evaluate_model_target", "plan_model_methods"]

FILL = "road"
MARGIN = 4  # slices of context kept on each side of the evaluated slices (the model predicts only this slab)


def _cropped(target: EvalTarget, slices: np.ndarray) -> tuple[EvalTarget, int]:
    """The target cut to the evaluated slices and ``MARGIN`` slices of context: (cut target, first slice)."""
    first = max(0, int(slices.min()) - MARGIN)
    stop = min(target.ct.shape[0], int(slices.max()) + MARGIN + 1)
    cut = slice(first, stop)
    return replace(target, ct=target.ct[cut], reference=target.reference[cut], other=target.other[cut],
                   body=target.body[cut]), first


def _volume(target: EvalTarget, ct: np.ndarray | None = None) -> Volume:
    """The target's CT as a volume with identity direction (display order = (k, j, i))."""
    spacing = tuple(float(v) for v in target.spacing[::-1])  # (s, r, c) -> (i, j, k)
    return Volume(np.ascontiguousarray(target.ct if ct is None else ct, dtype=np.float32), Geometry(spacing=spacing))


def plan_model_methods(model: object, target: EvalTarget, class_index: int, layers: tuple[str, ...],
                       methods: tuple[str, ...]) -> MethodPlan:
    """Probe every (method, layer) once through ``explain_ct`` on the first target; refusals become "n/a".

    Seconds are per case (one explained volume), not per slice: the model explains volumes.
    """
    volume = _volume(target)
    mask = target.reference
    started = time.perf_counter()
    try:
        model.explain_ct(volume, mask, class_index, layers=layers, methods=methods, normalize="none")
    except ValueError:
        return probe_pairs(lambda ls, ms: model.explain_ct(volume, mask, class_index, layers=ls, methods=ms,
                                                           normalize="none"), layers, methods)
    seconds = (time.perf_counter() - started) / len(methods)
    return MethodPlan(layers, methods, seconds_per_slice=dict.fromkeys(methods, seconds))


def evaluate_model_target(model: object, target: EvalTarget, class_index: int, config: EvaluationConfig,
                          plan: MethodPlan, source: str, bar=None) -> TargetResult:
    """Localisation and ROAD Dice deletion of every accepted map on one target (see the module docstring).

    Args:
        model: An explainable model.
        target: The case and structure.
        class_index: The model's class for the structure.
        config: Settings (layers, methods, steps, dilation, dice_zone, seed, slices).
        plan: Accepted (method, layer) pairs.
        source: "label" or "prediction" (the model's own segmentation touching the label).
        bar: A progress bar (update per ranking) or None.

    Returns:
        Rows (metrics per slice), counts; no curves of y_M, no randomisation.
    """
    result = TargetResult()
    group = group_name(target, source, config)
    volume = _volume(target)
    if source == "label":
        full_m = target.reference.copy()
    else:
        full_m = keep_touching(model.predict_ct(volume) == class_index, target.reference)
    areas = full_m.sum((1, 2))
    if not areas.any():
        result.counts = {"slices": 0, "empty_m": 1}
        return result
    chosen = _select(target, areas, config)
    target, offset = _cropped(target, chosen)
    full_m = full_m[offset:offset + target.ct.shape[0]]
    slices = chosen - offset
    volume = _volume(target)
    rows = _Rows(target, group, result, slices)
    rows.offset = offset
    result.counts["slices"] = len(slices)
    mask = np.zeros_like(full_m)
    mask[slices] = full_m[slices]
    accepted = plan.keys()
    explained = model.explain_ct(volume, mask, class_index, layers=plan.layers,
                                 methods=tuple(dict.fromkeys(m for m, _ in accepted)), normalize="none")
    maps = {key: np.clip(np.asarray(explained.maps[key], dtype=np.float64)[slices], 0, None)
            for key in accepted if key in explained.maps}
    m = full_m[slices]
    for b, s in enumerate(slices):
        for name, heat in reference_maps(m[b], _rng(config.seed, target.name, s, "reference")).items():
            maps.setdefault((name, NO_LAYER), np.zeros(m.shape))[b] = heat
    for key, stack in maps.items():
        for b, s in enumerate(slices):
            scores = localisation_metrics(stack[b], m[b], dilation=config.dilation, other=target.other[s],
                                          body=target.body[s])
            for metric, value in scores.items():
                rows.add(s, *key, metric, value)
    fractions = uniform_fractions(config.steps)
    zone = dilate(m, config.dice_zone)

    def dice(ct: np.ndarray) -> np.ndarray:
        predicted = (model.predict_ct(_volume(target, ct)) == class_index)[slices] & zone
        overlap = (predicted & m).sum((1, 2))
        return 2 * overlap / np.maximum(predicted.sum((1, 2)) + m.sum((1, 2)), 1)

    original = dice(target.ct)
    noise = _rng(config.seed, target.name, group, FILL)
    for key, stack in maps.items():
        positions = np.stack([rank_positions(stack[b], _rng(config.seed, target.name, s, *key))
                              for b, s in enumerate(slices)])
        curve = np.empty((len(slices), len(fractions)))
        curve[:, 0] = original
        for index, fraction in enumerate(fractions[1:], start=1):
            remove = positions < round(fraction * positions[0].size)
            imputed = road_impute(torch.from_numpy(target.ct[slices][:, None].astype(np.float32)), remove, noise,
                                  noise=1.0)[:, 0].numpy()  # 1 HU, as ROAD's 0.01 on z-scored input
            ct = target.ct.copy()
            ct[slices] = imputed
            curve[:, index] = dice(ct)
        for b, s in enumerate(slices):
            rows.add(s, *key, f"deletion_dice_auc_{FILL}", curve_auc(curve[b], fractions))
        if bar is not None:
            bar.update(1)
    return result


def run_model_level(args: argparse.Namespace, command: str, model: object, config: EvaluationConfig,
                    make_targets: Callable[[argparse.Namespace, EvaluationConfig], list[EvalTarget]]) -> dict:
    """Evaluate an explainable model that prepares its own input; write the same report files.

    Args:
        args: The parsed options (``--out``).
        command: The command line that reproduces the run.
        model: The model, loaded and checked once by the caller.
        config: The settings (layers default to the model's default layer).
        make_targets: Builds the cases from the options.

    Returns:
        The run record.

    Raises:
        ValueError: If the model has none of the cases' classes.
    """

    started = time.perf_counter()
    targets, notes, classes = [], [], {}
    for target in make_targets(args, config):
        try:
            classes[target.class_name] = model.class_for_segment(target.class_name)
            targets.append(target)
        except ValueError:
            notes.append(f"Not evaluated: {target.name} (the model has no class {target.class_name!r}).")
    if not targets:
        raise ValueError(f"the model's classes {model.class_names} hold none of the cases' structures")
    notes = list(dict.fromkeys(notes))
    first = targets[0]
    probe, _ = _cropped(first, np.flatnonzero(first.reference.any((1, 2)))[:1])
    plan = plan_model_methods(model, probe, classes[first.class_name], config.layers, config.methods)
    notes.append(f"Model evaluated through its own preprocessing and prediction ({model.spatial_dims}D): "
                 "localisation and ROAD MoRF deletion of the Dice near M; y_M curves, receptive bounds and "
                 "randomisation need the network's logits on slices and are not measured for this kind of model. "
                 "Method cost in the cost table: seconds per explained case.")
    done = []
    work = [(target, source) for source in config.pixel_sets for target in targets]
    overall = tqdm_bar("targets", len(work))
    for target, source in work:
        bar = tqdm_bar(f"{target.name} [{source}] ROAD deletion", len(plan.keys()) + 3)
        done.append((target, source, evaluate_model_target(model, target, classes[target.class_name], config, plan,
                                                           source, bar)))
        bar.close()
        overall.update(1)
    overall.close()
    collapsed_layers = set(getattr(model, "head_input_layers", ())) & set(config.layers)
    for _, _, result in done:
        result.collapsed = {layer: layer in collapsed_layers for layer in config.layers}
    return write_evaluation(args.out, done, config, plan, seconds=time.perf_counter() - started, command=command,
                            model_name=model.name, stages=[], notes=notes)
