"""Quantitative faithfulness: Seg-HiRes-Grad CAM against Seg-Grad CAM and Seg-XRes CAM.

``evaluate_target`` runs every measurement on one structure of one case (a few axial slices):
localisation, deletion and insertion curves (blurred and tissue-mean fills), cascading weight
randomisation, HiResCAM exactness and collapse detection. ``run_evaluation`` does it over all
targets; ``evaluation_report`` turns the per-slice rows into tables and ``evaluation_plots`` into
plots. The command line is ``seghirescam evaluate`` (``evaluate_cli``).

Arrays: target volumes are (s, r, c) axial slices in display convention; model input x is
(B, C, H, W) and pixel sets m are (B, H, W) bool on the chosen slices.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from seghirescam.models.card import ModelCard
from seghirescam.cam.engine import explain_slices
from seghirescam.evaluation.config import EvaluationConfig
from seghirescam.evaluation.cases import EvalTarget, pixel_set, reference_maps
from seghirescam.evaluation.labels import REFERENCE_LABELS
from seghirescam.evaluation.exactness import COLLAPSE_TOLERANCE, collapse_errors, exactness_errors, head_bias
from seghirescam.evaluation.faithfulness import (MODES, blur_fill, curve_auc, inference_copy, normalize_curves, perturbation_curves,
                           rank_positions, score_slices, tissue_mean_fill, uniform_fractions)
from seghirescam.evaluation.localisation import dilate, localisation_metrics
from seghirescam.evaluation.sanity import cascading_randomisation, randomisation_stages, spearman
from seghirescam.models.unet import head_input_layers

__all__ = ["EvaluationConfig", "TargetResult", "evaluate_target", "run_evaluation", "REFERENCES", "NO_LAYER"]

log = logging.getLogger(__name__)
REFERENCES = tuple(REFERENCE_LABELS)  # the names reference_maps gives
NO_LAYER = "-"  # the layer of a reference map, which depends on no layer
TISSUE_HU = (-150.0, 250.0)  # soft tissue and fat, no air, no bone: the tissue-mean fill's pixels


@dataclass
class TargetResult:
    """Everything measured on one target.

    Attributes:
        rows: Per-slice metrics: dicts with target, group, slice, method, layer, metric, value.
        curves: {(method, layer, fill, mode): (n_valid, F) normalized y_M curves}.
        sanity: {(method, layer, pixels): {stage: (B,) Spearman}}, pixels "all" or "support" (``spearman``).
        counts: Slice counts: explained, left out for y_0 <= 0, and per fill for y_0 <= y_100%.
        collapsed: {layer: flagged as collapsing to the logit map}.
    """

    rows: list[dict] = field(default_factory=list)
    curves: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict)
    sanity: dict[tuple[str, str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    collapsed: dict[str, bool] = field(default_factory=dict)


def _rng(seed: int, *names: object) -> np.random.Generator:
    """A generator determined by the seed and names (not by the order of the work)."""
    return np.random.default_rng([seed, *(zlib.crc32(str(n).encode()) for n in names)])


def _row(target: EvalTarget, s: int, method: str, layer: str, metric: str, value: float) -> dict:
    return {"target": target.name, "group": target.group, "slice": int(s), "method": method, "layer": layer,
            "metric": metric, "value": float(value)}


def _faithfulness(model, target, result, maps, slices, x, m, c, config) -> None:
    """Deletion and insertion rows and curves of every map (keys of ``maps``)."""
    model = inference_copy(model)  # a faster copy for the many forwards
    y0, _ = score_slices(model, x, m, m, c, chunk=config.chunk)
    keep = y0 > 0
    result.counts["y0_le_0"] = int((~keep).sum())
    if not keep.any():
        return
    keys = list(maps)
    xk, mk, zone = x[keep], m[keep], dilate(m[keep], config.dice_zone)
    kept = slices[keep]
    positions = np.stack([[rank_positions(maps[key][b], _rng(config.seed, target.name, s, *key))
                           for b, s in zip(np.flatnonzero(keep), kept)] for key in keys])
    hu = target.ct[kept]
    tissue = target.body[kept] & (hu > TISSUE_HU[0]) & (hu < TISSUE_HU[1])
    fractions = uniform_fractions(config.steps)
    for fill_name, fill in (("blur", blur_fill(xk, config.blur_sigma)), ("mean", tissue_mean_fill(xk, tissue))):
        for mode in MODES:
            curves = perturbation_curves(model, xk, mk, zone, c, positions, fill, mode=mode, fractions=fractions,
                                         chunk=config.chunk)
            normalized, valid = normalize_curves(curves)
            result.counts[f"span_le_0_{fill_name}"] = int((~valid).sum())
            areas, dice_areas = curve_auc(normalized, fractions), curve_auc(curves.dice, fractions)
            for r, key in enumerate(keys):
                result.curves[(*key, fill_name, mode)] = normalized[r][valid]
                for b in np.flatnonzero(valid):
                    result.rows.append(_row(target, kept[b], *key, f"{mode}_auc_{fill_name}", areas[r, b]))
                    result.rows.append(_row(target, kept[b], *key, f"{mode}_dice_auc_{fill_name}", dice_areas[r, b]))


def _sanity(model, target, result, cams, slices, x, m_t, c, config) -> None:
    """Spearman of every CAM with its original after each cumulative randomisation stage."""
    stages = randomisation_stages(model)
    randomised = cascading_randomisation(model, x, m_t, c, layers=config.layers, methods=config.methods,
                                         seed=config.seed, stages=stages)
    names = [name for name, _ in stages]
    for key, original in cams.items():
        own = next((n for n, modules in stages if key[1] in modules), None)
        summary = {"spearman_head": names[0], "spearman_layer": own, "spearman_all": names[-1]}
        for pixels, suffix in (("all", ""), ("support", "_support")):
            per_stage = {stage: np.array([spearman(original[b], maps[key][b].numpy(), support_only=pixels != "all")
                                          for b in range(len(slices))]) for stage, maps in randomised.items()}
            result.sanity[(*key, pixels)] = per_stage
            for metric, stage in summary.items():
                for b, s in enumerate(slices):
                    value = per_stage[stage][b] if stage else np.nan
                    result.rows.append(_row(target, s, *key, metric + suffix, value))


def evaluate_target(model: nn.Module, card: ModelCard, target: EvalTarget,
                    config: EvaluationConfig | None = None) -> TargetResult:
    """Every measurement on one target.

    Args:
        model: A segmentation model (B, C, H, W) -> logits; left as found.
        card: Its card: classes and preprocessing.
        target: The structure and case.
        config: The settings (default: ``EvaluationConfig()``, every registered method).

    Returns:
        The target's rows, curves, randomisation results, counts and collapse flags.

    Raises:
        ValueError: If the card has no class of the target's name, or M is empty on every slice.
    """
    config = config if config is not None else EvaluationConfig()
    if target.class_name not in card.classes:
        raise ValueError(f"the model's classes {card.classes} do not include {target.class_name!r}")
    c = card.classes.index(target.class_name)
    full_m = pixel_set(model, card, target, config.pixel_set, c)
    areas = full_m.sum((1, 2))
    if not areas.any():
        raise ValueError(f"{target.name}: M is empty on every slice")
    order = np.argsort(-areas, kind="stable")
    slices = np.sort(order[: min(config.slices_per_target, int((areas > 0).sum()))])
    result = TargetResult(counts={"slices": len(slices)})
    x = card.preprocess(torch.from_numpy(np.ascontiguousarray(target.ct[slices], dtype=np.float32)))
    m = full_m[slices]
    m_t = torch.from_numpy(m)
    cams = {key: value.numpy() for key, value in
            explain_slices(model, x, m_t, c, layers=config.layers, methods=config.methods).items()}
    maps = dict(cams)
    for b, s in enumerate(slices):
        for name, heat in reference_maps(m[b], _rng(config.seed, target.name, s, "reference")).items():
            maps.setdefault((name, NO_LAYER), np.zeros((len(slices), *m.shape[1:])))[b] = heat
    for key, stack in maps.items():
        for b, s in enumerate(slices):
            scores = localisation_metrics(stack[b], m[b], dilation=config.dilation, other=target.other[s],
                                          body=target.body[s])
            result.rows.extend(_row(target, s, *key, metric, value) for metric, value in scores.items())
    _faithfulness(model, target, result, maps, slices, x, m, c, config)
    if config.sanity:
        _sanity(model, target, result, cams, slices, x, m_t, c, config)
    if head_bias(model) is not None:
        for key, errors in exactness_errors(model, x, m_t, c, layers=config.layers, methods=config.methods).items():
            result.rows.extend(_row(target, s, *key, "exactness_rel_error", e) for s, e in zip(slices, errors))
    known = set(head_input_layers(model))
    for layer, errors in collapse_errors(model, x, m_t, c, layers=config.layers).items():
        result.collapsed[layer] = layer in known or bool(np.all(errors < COLLAPSE_TOLERANCE))
        result.rows.extend(_row(target, s, "seg-hires-grad-cam", layer, "collapse_error", e)
                           for s, e in zip(slices, errors))
    return result


def run_evaluation(model: nn.Module, card: ModelCard, targets: Sequence[EvalTarget],
                   config: EvaluationConfig | None = None) -> tuple[list[TargetResult], float]:
    """``evaluate_target`` over all targets, with progress logged.

    Args:
        model, card: The model explained.
        targets: What to evaluate.
        config: The settings (default: ``EvaluationConfig()``, every registered method).

    Returns:
        (results in target order, seconds taken).
    """
    config = config if config is not None else EvaluationConfig()
    started = time.perf_counter()
    results = []
    for index, target in enumerate(targets, start=1):
        results.append(evaluate_target(model, card, target, config))
        log.info("%d/%d %s done (%.0f s)", index, len(targets), target.name, time.perf_counter() - started)
    return results, time.perf_counter() - started
