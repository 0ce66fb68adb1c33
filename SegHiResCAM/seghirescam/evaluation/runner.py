"""Quantitative faithfulness of every registered CAM method, with controls, statistics and a resumable cache.

``evaluate_target`` runs every measurement on one structure of one case (a few axial slices) for one
source of M (the reference label, or the model's own prediction): localisation, the receptive
bound of each layer, deletion and insertion curves (ROAD imputation, blurred and tissue-mean
fills), cascading weight randomisation over several seeds, HiResCAM exactness and collapse
detection. ``run_evaluation`` probes the methods once (``plan.plan_methods``), then does it over all
targets and sources with a progress bar per stage, reading finished targets from the cache.
``report`` turns the per-slice rows into tables with confidence intervals and verdicts.

Arrays: target volumes are (s, r, c) axial slices in display convention; model input x is
(B, C, H, W) and pixel sets m are (B, H, W) bool on the chosen slices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seghirescam.atomic import atomic_path, write_json_atomic
from seghirescam.models.card import ModelCard
from seghirescam.evaluation.config import EvaluationConfig
from seghirescam.evaluation.cases import EvalTarget, pixel_set, reference_maps
from seghirescam.evaluation.labels import REFERENCE_LABELS, RF_BOUND
from seghirescam.evaluation.exactness import COLLAPSE_TOLERANCE, collapse_errors, exactness_errors, head_bias
from seghirescam.evaluation.faithfulness import (MODES, blur_fill, curve_auc, inference_copy, normalize_curves,
                                                 perturbation_curves, rank_positions, score_slices, tissue_mean_fill,
                                                 uniform_fractions)
from seghirescam.evaluation.localisation import dilate, localisation_metrics
from seghirescam.evaluation.plan import MethodPlan, explain_planned, plan_methods
from seghirescam.evaluation.receptive import receptive_bounds, structural_copy
from seghirescam.evaluation.road import road_impute
from seghirescam.evaluation.sanity import randomisation_stages, randomised_maps, sanity_stages, spearman
from seghirescam.models.unet import head_input_layers

__all__ = ["EvaluationConfig", "TargetResult", "evaluate_target", "run_evaluation", "prepare_plan", "group_name",
           "REFERENCES", "NO_LAYER", "SANITY_SEED_STRIDE"]

log = logging.getLogger(__name__)
REFERENCES = tuple(key for key in REFERENCE_LABELS if key != RF_BOUND)  # the names reference_maps gives
NO_LAYER = "-"  # the layer of a reference map, which depends on no layer
TISSUE_HU = (-150.0, 250.0)  # soft tissue and fat, no air, no bone: the tissue-mean fill's pixels
SANITY_SEED_STRIDE = 1000  # randomisation draw r uses seeds seed + 1000 r + stage index
CACHE_VERSION = 2  # bump when what a cached target holds changes
Bar = Callable[[str, int], object]


@dataclass
class TargetResult:
    """Everything measured on one target for one source of M.

    Attributes:
        rows: Per-slice metrics: dicts with target, group, slice, method, layer, metric, value.
        curves: {(method, layer, fill, mode): (n_valid, F) normalized y_M curves}.
        sanity: {(method, layer): {stage: (draws, n) |Spearman| on support}}.
        counts: Slice counts: explained, left out for y_0 <= 0, per fill for y_0 <= y_100%, subsampled.
        collapsed: {layer: flagged as collapsing to the logit map}.
    """

    rows: list[dict] = field(default_factory=list)
    curves: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict)
    sanity: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    collapsed: dict[str, bool] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write the result as ``path``.json and ``path``.npz (atomically; no pickle)."""
        arrays = {"curve|" + "|".join(key): value for key, value in self.curves.items()}
        arrays.update({"sanity|" + "|".join((*key, stage)): value for key, per_stage in self.sanity.items()
                       for stage, value in per_stage.items()})
        with atomic_path(path.with_suffix(".npz")) as temporary:
            np.savez(temporary, **arrays)
        write_json_atomic(path.with_suffix(".json"), {"rows": self.rows, "counts": self.counts,
                                                      "collapsed": self.collapsed})

    @classmethod
    def load(cls, path: Path) -> TargetResult | None:
        """Read a saved result; None if either file is missing."""
        if not (path.with_suffix(".json").is_file() and path.with_suffix(".npz").is_file()):
            return None
        record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        result = cls(rows=record["rows"], counts=record["counts"], collapsed=record["collapsed"])
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as arrays:
            for name in arrays.files:
                kind, *key = name.split("|")
                if kind == "curve":
                    result.curves[tuple(key)] = arrays[name]
                else:
                    result.sanity.setdefault(tuple(key[:2]), {})[key[2]] = arrays[name]
        return result


def _rng(seed: int, *names: object) -> np.random.Generator:
    """A generator determined by the seed and names (not by the order of the work)."""
    return np.random.default_rng([seed, *(zlib.crc32(str(n).encode()) for n in names)])


def group_name(target: EvalTarget, source: str, config: EvaluationConfig) -> str:
    """The table group of a target: its group, marked when M is not the first source (the label)."""
    return target.group if source == config.pixel_sets[0] else f"{target.group}, M = model prediction"


def _no_bar(_description: str, _total: int):
    return None


def _tick(bar: object, n: int = 1) -> None:
    if bar is not None:
        bar.update(n)


def _close(bar: object) -> None:
    if bar is not None:
        bar.close()


def tqdm_bar(description: str, total: int):
    """A tqdm bar on stderr (the progress of one stage)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=False, file=sys.stderr, dynamic_ncols=True)


class _Rows:
    """Appends per-slice rows of one target."""

    def __init__(self, target: EvalTarget, group: str, result: TargetResult, slices: np.ndarray) -> None:
        self.target, self.group, self.result, self.slices = target, group, result, slices
        self.offset = 0  # added to the slice index in the rows (a target cut from a larger volume)

    def add(self, s: int, method: str, layer: str, metric: str, value: float) -> None:
        self.result.rows.append({"target": self.target.name, "group": self.group,
                                 "slice": int(s) + self.offset, "method": method, "layer": layer,
                                 "metric": metric, "value": float(value)})


def _select(target: EvalTarget, areas: np.ndarray, config: EvaluationConfig) -> np.ndarray:
    """Slices to evaluate: every slice holding M (real CT, capped by ``real_ct_slices``) or the largest M."""
    holding = np.flatnonzero(areas > 0)
    if target.every_slice:
        if config.real_ct_slices is None or len(holding) <= config.real_ct_slices:
            return holding
        order = np.argsort(-areas, kind="stable")
        return np.sort(order[: config.real_ct_slices])
    order = np.argsort(-areas, kind="stable")
    return np.sort(order[: min(config.slices_per_target, len(holding))])


def _subsample(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded prefix of a permutation of range(count): the same rng gives nested subsamples for growing size."""
    return np.sort(rng.permutation(count)[: min(size, count)])


def _faithfulness(model, target, rows, result, maps, rankings, x, m, c, config, fills, bar) -> None:
    """Deletion and insertion rows and curves for every ranking, per fill.

    ``maps``: {key: (indices into the B slices, (b, H, W) maps)}; keys in ``rankings`` get curves.
    """
    y0, _ = score_slices(model, x, m, m, c, chunk=config.chunk)
    keep = y0 > 0
    result.counts["y0_le_0"] = int((~keep).sum())
    fractions = uniform_fractions(config.steps)
    hu = target.ct[rows.slices]
    tissue = target.body[rows.slices] & (hu > TISSUE_HU[0]) & (hu < TISSUE_HU[1])
    groups: dict[tuple[int, ...], list] = {}
    for key in rankings:
        indices = maps[key][0]
        groups.setdefault(tuple(int(i) for i in indices if keep[i]), []).append(key)
    for fill_name in fills:
        for indices, keys in groups.items():
            if not indices:
                continue
            idx = np.asarray(indices)
            xk, mk = x[idx], m[idx]
            zone = dilate(mk, config.dice_zone)
            positions = np.stack([[rank_positions(maps[key][1][list(maps[key][0]).index(i)],
                                                  _rng(config.seed, target.name, rows.slices[i], *key))
                                   for i in idx] for key in keys])
            if fill_name == "road":
                noise = _rng(config.seed, target.name, rows.group, "road", indices)
                fill = lambda batch, remove, noise=noise: road_impute(batch, remove, noise)  # noqa: E731
            elif fill_name == "blur":
                fill = blur_fill(xk, config.blur_sigma)
            elif fill_name == "mean":
                fill = tissue_mean_fill(xk, tissue[idx])
            else:
                raise ValueError(f"unknown fill {fill_name!r}; fills: road, blur, mean")
            for mode in MODES:
                curves = perturbation_curves(model, xk, mk, zone, c, positions, fill, mode=mode,
                                             fractions=fractions, chunk=config.chunk)
                normalized, valid = normalize_curves(curves)
                result.counts[f"span_le_0_{fill_name}"] = max(result.counts.get(f"span_le_0_{fill_name}", 0),
                                                              int((~valid).sum()))
                areas, dice_areas = curve_auc(normalized, fractions), curve_auc(curves.dice, fractions)
                for r, key in enumerate(keys):
                    previous = result.curves.get((*key, fill_name, mode))
                    found = normalized[r][valid]
                    result.curves[(*key, fill_name, mode)] = found if previous is None else np.concatenate([previous, found])
                    for b in np.flatnonzero(valid):
                        s = rows.slices[idx[b]]
                        rows.add(s, *key, f"{mode}_auc_{fill_name}", areas[r, b])
                        rows.add(s, *key, f"{mode}_dice_auc_{fill_name}", dice_areas[r, b])
            _tick(bar)


def _sanity(model, rows, result, cams, plan, slices_subset, expensive_subset, x, m_t, c, config, bar) -> None:
    """|Spearman| on support of every CAM with its original, per randomisation draw, at the stages read."""
    stages = randomisation_stages(model)
    wanted = sanity_stages(stages, plan.layers)
    keep = sorted({name for name in wanted.values() if name}, key=[n for n, _ in stages].index)
    subsets = {"cheap": (slices_subset, plan.cheap())}
    if config.sanity_expensive:
        subsets["expensive"] = (expensive_subset, plan.expensive)
    values: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}
    indices_of: dict[tuple[str, str], np.ndarray] = {}
    for draw in range(config.sanity_seeds):
        for subset, methods in subsets.values():
            if not len(subset) or not methods:
                continue
            xs, ms = x[subset], m_t[subset]

            def explain(net: nn.Module, xs=xs, ms=ms, methods=methods) -> dict:
                return explain_planned(inference_copy(net), xs, ms, c, plan, methods)

            randomised = randomised_maps(model, explain, stages=stages, keep=keep,
                                         seed=config.seed + SANITY_SEED_STRIDE * draw)
            for stage, maps in randomised.items():
                for key, stack in maps.items():
                    original = cams[key]
                    position = {int(i): j for j, i in enumerate(original[0])}
                    rho = np.array([abs(spearman(original[1][position[int(i)]], stack[b].numpy(), support_only=True))
                                    for b, i in enumerate(subset)])
                    values.setdefault(key, {}).setdefault(stage, []).append(rho)
                    indices_of[key] = subset
            _tick(bar)
    for key, per_stage in values.items():
        result.sanity[key] = {stage: np.stack(draws) for stage, draws in per_stage.items()}
        readings = {"head": wanted["head"], "layer": wanted.get(f"layer:{key[1]}"), "all": wanted["all"]}
        for reading, stage in readings.items():
            if stage is None or stage not in per_stage:
                continue
            draws = np.stack(per_stage[stage])  # (draws, n)
            for b, i in enumerate(indices_of[key]):
                finite = draws[:, b][np.isfinite(draws[:, b])]  # NaN: both maps constant on that draw
                mean, spread = (finite.mean(), finite.std()) if finite.size else (np.nan, np.nan)
                rows.add(rows.slices[i], *key, f"abs_rho_{reading}", float(mean))
                rows.add(rows.slices[i], *key, f"abs_rho_{reading}_spread", float(spread))


def evaluate_target(model: nn.Module, card: ModelCard, target: EvalTarget, config: EvaluationConfig | None = None,
                    *, plan: MethodPlan | None = None, source: str | None = None, bar: Bar = _no_bar) -> TargetResult:
    """Every measurement on one target for one source of M.

    Args:
        model: A segmentation model (B, C, H, W) -> logits; left as found.
        card: Its card: classes and preprocessing.
        target: The structure and case.
        config: The settings (default: ``EvaluationConfig()``, every registered method).
        plan: The methods' probe (``prepare_plan``); made on this target if None.
        source: "label" or "prediction" (default: the config's first pixel set).
        bar: Makes a progress bar: bar(description, total) -> an object with update(n) and close().

    Returns:
        The target's rows, curves, randomisation results, counts and collapse flags. M empty on every
        slice: for the model's prediction an empty result counted as ``counts["empty_m"]``.

    Raises:
        ValueError: If the card has no class of the target's name, or the label M is empty everywhere.
    """
    config = config if config is not None else EvaluationConfig()
    source = source or config.pixel_sets[0]
    if target.class_name not in card.classes:
        raise ValueError(f"the model's classes {card.classes} do not include {target.class_name!r}")
    c = card.classes.index(target.class_name)
    full_m = pixel_set(model, card, target, source, c)
    areas = full_m.sum((1, 2))
    group = group_name(target, source, config)
    result = TargetResult()
    if not areas.any():
        if source == "label":
            raise ValueError(f"{target.name}: M is empty on every slice")
        result.counts = {"slices": 0, "empty_m": 1}
        return result
    slices = _select(target, areas, config)
    rows = _Rows(target, group, result, slices)
    result.counts["slices"] = len(slices)
    x = card.preprocess(torch.from_numpy(np.ascontiguousarray(target.ct[slices], dtype=np.float32)))
    m = full_m[slices]
    m_t = torch.from_numpy(m)
    plan = plan if plan is not None else prepare_plan(model, card, target, config)
    subsample = _subsample(len(slices), max(config.sanity_slices, config.expensive_slices),
                           _rng(config.seed, target.name, group, "subsample"))
    expensive_subset = subsample[: min(config.expensive_slices, len(subsample))]
    sanity_subset = subsample[: min(config.sanity_slices, len(subsample))]
    result.counts["expensive_slices"] = len(expensive_subset) if plan.expensive else 0

    stage = bar(f"{target.name} [{source}] maps", 2)
    every = np.arange(len(slices))
    # The maps and curves run on the model with its batch-norms folded into the convolutions (the same
    # function up to float rounding, about 2x faster); exactness, collapse and randomisation use the model.
    fast = inference_copy(model)
    cams = {key: (every, value.numpy()) for key, value in explain_planned(fast, x, m_t, c, plan, plan.cheap()).items()}
    _tick(stage)
    if plan.expensive and len(expensive_subset):
        cams.update({key: (expensive_subset, value.numpy()) for key, value in
                     explain_planned(fast, x[expensive_subset], m_t[expensive_subset], c, plan,
                                     plan.expensive).items()})
    _tick(stage)
    _close(stage)
    maps = dict(cams)
    for b, s in enumerate(slices):
        for name, heat in reference_maps(m[b], _rng(config.seed, target.name, s, "reference")).items():
            maps.setdefault((name, NO_LAYER), (every, np.zeros((len(slices), *m.shape[1:]))))[1][b] = heat
    bounds = receptive_bounds(model, x, m_t, c, plan.layers, structural=_structural(model))
    for layer, bound in bounds.items():
        maps[(RF_BOUND, layer)] = (every, bound.astype(np.float64))
    for key, (indices, stack) in maps.items():
        for j, b in enumerate(indices):
            s = slices[b]
            scores = localisation_metrics(stack[j], m[b], dilation=config.dilation, other=target.other[s],
                                          body=target.body[s])
            for metric, value in scores.items():
                rows.add(s, *key, metric, value)
            if key[0] != RF_BOUND and key[1] in bounds:
                total = stack[j].sum()
                rows.add(s, *key, "mass_in_bound", stack[j][bounds[key[1]][b]].sum() / total if total > 0 else np.nan)
    for layer, bound in bounds.items():
        for b, s in enumerate(slices):
            rows.add(s, RF_BOUND, layer, "bound_area", bound[b].mean())
    known = set(head_input_layers(model))
    for layer, errors in collapse_errors(model, x, m_t, c, layers=plan.layers).items():
        result.collapsed[layer] = layer in known or bool(np.all(errors < COLLAPSE_TOLERANCE))
        for s, e in zip(slices, errors):
            rows.add(s, "seg-hires-grad-cam", layer, "collapse_error", e)
    rankings = [key for key in maps if key[0] != RF_BOUND
                and (key[1] == NO_LAYER or config.curves_at_collapsed or not result.collapsed.get(key[1]))]
    fills = config.fills_for(source)
    stage = bar(f"{target.name} [{source}] deletion/insertion", len(fills) * (1 + bool(plan.expensive)))
    _faithfulness(fast, target, rows, result, maps, rankings, x, m, c, config, fills, stage)
    _close(stage)
    if config.sanity and source == config.pixel_sets[0]:
        stage = bar(f"{target.name} [{source}] randomisation",
                    config.sanity_seeds * (1 + bool(plan.expensive and config.sanity_expensive)))
        _sanity(model, rows, result, cams, plan, sanity_subset, expensive_subset, x, m_t, c, config, stage)
        _close(stage)
    if head_bias(model) is not None and source == config.pixel_sets[0]:  # an identity of the model: once
        cheap_keys = plan.keys(plan.cheap())
        methods = tuple(dict.fromkeys(method for method, _ in cheap_keys))
        by_layer = {layer: [mm for mm in methods if (mm, layer) in cheap_keys] for layer in plan.layers}
        for layer, present in by_layer.items():
            if not present:
                continue
            for method in present:
                try:
                    errors = exactness_errors(model, x, m_t, c, layers=(layer,), methods=(method,))
                except ValueError:  # a method without a pre-ReLU map at layer resolution has no exactness
                    continue
                for key, values in errors.items():
                    for s, e in zip(slices, values):
                        rows.add(s, *key, "exactness_rel_error", e)
    return result


_STRUCTURAL: dict[int, nn.Module] = {}


def _structural(model: nn.Module) -> nn.Module:
    """The model's structural copy, made once per model object."""
    if id(model) not in _STRUCTURAL:
        _STRUCTURAL.clear()
        _STRUCTURAL[id(model)] = structural_copy(model)
    return _STRUCTURAL[id(model)]


def prepare_plan(model: nn.Module, card: ModelCard, target: EvalTarget, config: EvaluationConfig) -> MethodPlan:
    """Probe every (method, layer) on the slice of ``target`` with the largest label (``plan.plan_methods``)."""
    c = card.classes.index(target.class_name)
    areas = target.reference.sum((1, 2))
    slices = np.sort(np.argsort(-areas, kind="stable")[:1])
    x = card.preprocess(torch.from_numpy(np.ascontiguousarray(target.ct[slices], dtype=np.float32)))
    return plan_methods(model, x, torch.from_numpy(target.reference[slices]), c, layers=config.layers,
                        methods=config.methods, expensive_costs=config.expensive_costs)


def _cache_key(target: EvalTarget, source: str, config: EvaluationConfig, plan: MethodPlan, model_id: str) -> str:
    record = {"version": CACHE_VERSION, "config": asdict(config), "target": target.name, "source": source,
              "model": model_id, "expensive": list(plan.expensive), "refused": sorted("|".join(k) for k in plan.refused),
              "data": hashlib.sha256(target.ct.tobytes() + target.reference.tobytes()).hexdigest()}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:20]


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's class and state (weights and buffers): the cache's model identity."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def run_evaluation(model: nn.Module, card: ModelCard, targets: Sequence[EvalTarget],
                   config: EvaluationConfig | None = None, *, cache: Path | None = None, bar: Bar = _no_bar,
                   plan: MethodPlan | None = None) -> tuple[list[tuple[EvalTarget, str, TargetResult]], MethodPlan, float]:
    """The methods' probe, then ``evaluate_target`` over all targets and sources of M.

    Args:
        model, card: The model explained.
        targets: What to evaluate.
        config: The settings (default: ``EvaluationConfig()``, every registered method).
        cache: A folder: finished (target, source) results are written there and read back by a later run
            with the same settings, model and data (a second run reproduces the tables exactly).
        bar: Progress bars (``tqdm_bar`` from the command line).
        plan: A probe to reuse (default: made on the first target).

    Returns:
        ([(target, source, result)], plan, seconds taken).
    """
    config = config if config is not None else EvaluationConfig()
    started = time.perf_counter()
    if plan is None:
        plan = prepare_plan(model, card, targets[0], config)
    model_id = model_fingerprint(model)
    done = []
    work = [(target, source) for source in config.pixel_sets for target in targets]
    overall = bar("targets", len(work))
    for target, source in work:
        path = None if cache is None else cache / _cache_key(target, source, config, plan, model_id)
        result = TargetResult.load(path) if path is not None else None
        if result is None:
            result = evaluate_target(model, card, target, config, plan=plan, source=source, bar=bar)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                result.save(path)
        done.append((target, source, result))
        _tick(overall)
        log.info("%s [%s] done (%.0f s)", target.name, source, time.perf_counter() - started)
    _close(overall)
    return done, plan, time.perf_counter() - started
