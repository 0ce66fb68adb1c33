"""Tables of the faithfulness evaluation: per-slice rows -> summaries with bootstrap CIs, verdicts against the
controls (paired Wilcoxon over slices), per-slice comparisons, CSV, Markdown.

Rows are dicts with target, group, slice, method, layer, metric, value (``runner.TargetResult``).
"""

from __future__ import annotations

import csv
import os
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from seghirescam.atomic import atomic_path
from seghirescam.evaluation.labels import BASELINE, DISC, RF_BOUND, is_reference, ordered_methods, table_label
from seghirescam.evaluation.statistics import ALPHA, bootstrap_ci, paired_test, verdict

__all__ = ["summarise", "compare", "verdicts", "write_csv", "markdown_report", "HIGHER_IS_BETTER", "TIE_TOLERANCE",
           "VERDICT_METRICS", "ARCHITECTURAL_METRICS"]

TIE_TOLERANCE = 0.01
TIGHT_BOUND = 0.5  # a receptive bound covering less than half the slice shapes localisation by itself
HIGHER_IS_BETTER = {
    **{f"deletion_auc_{fill}": False for fill in ("road", "blur", "mean")},
    **{f"insertion_auc_{fill}": True for fill in ("road", "blur", "mean")},
    **{f"deletion_dice_auc_{fill}": False for fill in ("road", "blur", "mean")},
    **{f"insertion_dice_auc_{fill}": True for fill in ("road", "blur", "mean")},
    "mass_in_m": True, "mass_in_m_dilated": True, "pointing": True, "pointing_dilated": True, "mass_other": False,
    "mass_outside_body": False, "abs_rho_head": False, "abs_rho_layer": False, "abs_rho_all": False,
    "exactness_rel_error": False,
}
VERDICT_METRICS = ("deletion_auc_road", "insertion_auc_road", "deletion_auc_blur", "insertion_auc_blur",
                   "deletion_auc_mean", "insertion_auc_mean", "deletion_dice_auc_road", "mass_in_m_dilated")
"""Metrics on which every map is tested against the centre-distance disc."""
ARCHITECTURAL_METRICS = ("mass_in_m", "mass_in_m_dilated")
"""Localisation metrics on which a map must beat the uniform map on its layer's receptive bound to count."""


def _seed(*names: object) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(n).encode()) for n in names])


def summarise(rows: Iterable[dict], seed: int = 0) -> list[dict]:
    """n, mean, seeded bootstrap 95 % CI of the mean and median per (group, method, layer, metric), first-seen order."""
    values: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        values[(row["group"], row["method"], row["layer"], row["metric"])].append(row["value"])
    summary = []
    for key, found in values.items():
        finite = np.asarray(found, dtype=float)
        finite = finite[np.isfinite(finite)]
        mean, median = (float(finite.mean()), float(np.median(finite))) if finite.size else (np.nan, np.nan)
        low, high = bootstrap_ci(finite, _seed(seed, *key))
        group, method, layer, metric = key
        summary.append({"group": group, "method": method, "layer": layer, "metric": metric, "n": int(finite.size),
                        "mean": round(mean, 4), "ci_low": round(low, 4), "ci_high": round(high, 4),
                        "median": round(median, 4)})
    return summary


def _paired(rows: Iterable[dict], metrics: Sequence[str]) -> dict[tuple, dict[tuple, float]]:
    """{(group, method, layer, metric): {(target, slice): value}}."""
    paired: dict[tuple, dict[tuple, float]] = defaultdict(dict)
    for row in rows:
        if row["metric"] in metrics:
            paired[(row["group"], row["method"], row["layer"], row["metric"])][(row["target"], row["slice"])] = \
                row["value"]
    return paired


def verdicts(rows: Sequence[dict]) -> list[dict]:
    """Every map against the controls, slice by slice (one-sided paired Wilcoxon signed-rank, level ``ALPHA``).

    - Against the centre-distance disc on ``VERDICT_METRICS``: "yes" (the map is better), "no: worse"
      (the disc is better) or "not shown".
    - Against the uniform map on the layer's receptive bound on ``ARCHITECTURAL_METRICS``: "evidence"
      (the map beats it); otherwise "architectural" where the bound is tight (it covers less than
      ``TIGHT_BOUND`` of the slice on average: the layer's reach alone explains the score), else "not shown".

    Returns:
        Dicts: group, method, layer, metric, control ("disc" or "rf-bound"), n, p_better, p_worse, verdict.
    """
    paired = _paired(rows, VERDICT_METRICS)
    areas: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row["metric"] == "bound_area":
            areas[(row["group"], row["layer"])].append(row["value"])
    out = []
    for (group, method, layer, metric), values in paired.items():
        if method in (DISC, RF_BOUND):
            continue
        controls = [("disc", paired.get((group, DISC, "-", metric), {}))]
        if metric in ARCHITECTURAL_METRICS and not is_reference(method):
            controls.append(("rf-bound", paired.get((group, RF_BOUND, layer, metric), {})))
        for control, reference in controls:
            common = sorted(set(values) & set(reference))
            if not common:
                continue
            p_better, p_worse, n = paired_test(np.array([values[k] for k in common]),
                                               np.array([reference[k] for k in common]),
                                               higher_is_better=HIGHER_IS_BETTER[metric])
            found = verdict(p_better, p_worse)
            if control == "rf-bound":
                tight = float(np.mean(areas.get((group, layer), [1.0]))) < TIGHT_BOUND
                found = "evidence" if found == "yes" else "architectural" if tight else "not shown"
            out.append({"group": group, "method": method, "layer": layer, "metric": metric, "control": control,
                        "n": n, "p_better": round(p_better, 5), "p_worse": round(p_worse, 5), "verdict": found})
    return out


def compare(rows: Iterable[dict], collapsed: Sequence[str] = (), baseline: str = BASELINE) -> list[dict]:
    """Per-slice better / tie / worse counts of the baseline (Seg-HiRes) against every other CAM method present.

    Pairs are the same target, slice, layer and metric; a difference within ``TIE_TOLERANCE`` is a
    tie; "better" follows ``HIGHER_IS_BETTER``. Collapsed layers are marked and not counted. The
    other methods are all CAM methods found in ``rows`` (registered or not; references excluded),
    registered ones in registration order.

    Returns:
        Dicts: group, layer, metric, other, better, tie, worse, collapsed; none if the baseline was not run.
    """
    rows = list(rows)
    methods = ordered_methods(row["method"] for row in rows)
    if baseline not in methods:
        return []
    others = [method for method in methods if method != baseline]
    paired: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row["metric"] in HIGHER_IS_BETTER and not is_reference(row["method"]):
            key = (row["group"], row["layer"], row["metric"], row["target"], row["slice"])
            paired[key][row["method"]] = row["value"]
    counts: dict[tuple, list[int]] = {}
    for (group, layer, metric, _, _), by_method in paired.items():
        if baseline not in by_method:
            continue
        for other in others:
            tally = counts.setdefault((group, layer, metric, other), [0, 0, 0])
            a, b = by_method.get(baseline, np.nan), by_method.get(other, np.nan)
            if not (np.isfinite(a) and np.isfinite(b)):
                continue
            difference = (a - b) if HIGHER_IS_BETTER[metric] else (b - a)
            tally[0 if difference > TIE_TOLERANCE else 2 if difference < -TIE_TOLERANCE else 1] += 1
    return [{"group": g, "layer": layer, "metric": metric, "other": other, "better": t[0], "tie": t[1], "worse": t[2],
             "collapsed": layer in collapsed} for (g, layer, metric, other), t in counts.items()]


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """Write dicts as CSV (columns of the first row) atomically.

    Raises:
        ValueError: If there are no rows.
    """
    if not rows:
        raise ValueError(f"nothing to write to {path}")
    path = Path(path)
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(summary: Mapping, key: tuple, digits: int = 3, spread: Mapping | None = None) -> str:
    found = summary.get(key)
    if found is None or not found["n"]:
        return "–"
    text = f"{found['mean']:.{digits}f} [{found['ci_low']:.{digits}f}, {found['ci_high']:.{digits}f}]"
    if spread is not None and (key[:3] + (key[3] + "_spread",)) in spread:
        text += f" ±{spread[key[:3] + (key[3] + '_spread',)]['mean']:.2f}"
    return text


def _layer_label(layer: str, collapsed: Sequence[str]) -> str:
    return f"{layer} ⚠ collapsed" if layer in collapsed else ("—" if layer == "-" else layer)


def _row_keys(summary: list[dict], metrics: set[str], layers: Sequence[str] | None) -> list[tuple[str, str, str]]:
    """(group, method, layer) rows: CAM methods (registration order, layer by layer), then the controls."""
    found = list(dict.fromkeys((s["group"], s["method"], s["layer"]) for s in summary if s["metric"] in metrics
                               and (layers is None or s["layer"] in layers or s["layer"] == "-")))
    groups = list(dict.fromkeys(g for g, _, _ in found))
    methods = ordered_methods(m for _, m, _ in found)
    layer_order = list(dict.fromkeys(la for _, _, la in found if la != "-"))
    ordered = []
    for group in groups:
        for layer in layer_order:
            ordered += [(group, m, layer) for m in methods if (group, m, layer) in found]
            if (group, RF_BOUND, layer) in found:
                ordered.append((group, RF_BOUND, layer))
        ordered += [(g, m, la) for g, m, la in found if g == group and la == "-"]
    return ordered


def _table(summary: list[dict], columns: Sequence[tuple[str, str]], collapsed: Sequence[str],
           layers: Sequence[str] | None = None, refused: Mapping[tuple[str, str], str] | None = None,
           extra: Mapping[tuple[str, str, str], Sequence[str]] | None = None,
           extra_headers: Sequence[str] = ()) -> list[str]:
    """Markdown table: one row per (group, method, layer), one column per (metric, header); refused pairs "n/a"."""
    by_key = {(s["group"], s["method"], s["layer"], s["metric"]): s for s in summary}
    metrics = {m for m, _ in columns}
    row_keys = _row_keys(summary, metrics, layers)
    headers = [h for _, h in columns] + list(extra_headers)
    lines = ["| group | method | layer | " + " | ".join(headers) + " |", "|---|---|---|" + "---|" * len(headers)]
    for group, method, layer in row_keys:
        cells = [_cell(by_key, (group, method, layer, metric), spread=by_key) for metric, _ in columns]
        cells += list((extra or {}).get((group, method, layer), ["–"] * len(extra_headers)))
        lines.append(f"| {group} | {table_label(method)} | {_layer_label(layer, collapsed)} | "
                     + " | ".join(cells) + " |")
    groups = list(dict.fromkeys(g for g, _, _ in row_keys))
    for (method, layer), reason in (refused or {}).items():
        if layers is not None and layer not in layers:
            continue
        short = reason if len(reason) <= 90 else reason[:87] + "..."
        for group in groups:
            lines.append(f"| {group} | {table_label(method)} | {layer} | n/a: {short.replace('|', '/')} |"
                         + " |" * (len(headers) - 1))
    return lines


FAITHFULNESS = [("deletion_auc_road", "ROAD MoRF ↓"), ("insertion_auc_road", "ROAD LeRF ↑"),
                ("deletion_auc_blur", "deletion, blur ↓"), ("insertion_auc_blur", "insertion, blur ↑"),
                ("deletion_auc_mean", "deletion, tissue mean ↓"), ("insertion_auc_mean", "insertion, tissue mean ↑")]
DICE = [("deletion_dice_auc_road", "Dice MoRF, ROAD ↓"), ("insertion_dice_auc_road", "Dice LeRF, ROAD ↑"),
        ("deletion_dice_auc_blur", "Dice deletion, blur ↓"), ("insertion_dice_auc_blur", "Dice insertion, blur ↑")]
LOCALISATION = [("mass_in_m", "mass in M ↑"), ("mass_in_m_dilated", "mass in M+{d}px ↑"),
                ("pointing", "pointing ↑"), ("mass_other", "mass on other kidney ↓"),
                ("mass_outside_body", "mass outside body ↓"), ("mass_in_bound", "mass in RF bound"),
                ("bound_area", "RF bound, share of slice")]
SANITY = [("abs_rho_layer", "|ρ| on support, down to the layer ↓"), ("abs_rho_head", "|ρ| on support, head random ↓"),
          ("abs_rho_all", "|ρ| on support, all random ↓"), ("exactness_rel_error", "exactness rel. error")]
HEADLINE = [("deletion_auc_road", "ROAD MoRF ↓"), ("insertion_auc_road", "ROAD LeRF ↑"),
            ("deletion_dice_auc_road", "Dice MoRF, ROAD ↓"), ("mass_in_m_dilated", "mass in M+{d}px ↑"),
            ("abs_rho_layer", "|ρ| layer random ↓")]


def _verdict_cells(found: list[dict]) -> dict[tuple[str, str, str], list[str]]:
    """Headline verdict columns per (group, method, layer): disc on ROAD MoRF and LeRF, RF bound on M+d."""
    index = {(v["group"], v["method"], v["layer"], v["metric"], v["control"]): v for v in found}
    cells = {}
    for group, method, layer in dict.fromkeys((v["group"], v["method"], v["layer"]) for v in found):
        row = []
        for metrics, control in ((("deletion_auc_road", "deletion_dice_auc_road"), "disc"),
                                 (("insertion_auc_road",), "disc"), (("mass_in_m_dilated",), "rf-bound")):
            v = next((index[k] for k in ((group, method, layer, metric, control) for metric in metrics)
                      if k in index), None)
            row.append("–" if v is None else f"{v['verdict']} (p={min(v['p_better'], v['p_worse']):.2g}, n={v['n']})")
        cells[(group, method, layer)] = row
    return cells


def _comparison_table(comparisons: list[dict], metrics: dict[str, str]) -> list[str]:
    """Markdown: one row per (group, layer, metric), a "better / tie / worse" cell per other method."""
    others = ordered_methods(c["other"] for c in comparisons)
    if not others:
        return [f"No comparison: {table_label(BASELINE)} and at least one other CAM method must both be evaluated."]
    lines = ["| group | layer | metric | " + " | ".join(f"vs {table_label(o)}" for o in others) + " |",
             "|---|---|---|" + "---|" * len(others)]
    index = {(c["group"], c["layer"], c["metric"], c["other"]): c for c in comparisons}
    collapsed = dict.fromkeys((c["group"], c["layer"]) for c in comparisons if c["collapsed"])
    groups, layers = (list(dict.fromkeys(c[field] for c in comparisons)) for field in ("group", "layer"))
    for group, layer, metric in ((g, la, m) for g in groups for la in layers for m in metrics):
        if not any((group, layer, metric, o) in index for o in others) or (group, layer) in collapsed:
            continue
        cells = []
        for other in others:
            c = index.get((group, layer, metric, other))
            cells.append("–" if c is None or not (c["better"] + c["tie"] + c["worse"])
                         else f"{c['better']} / {c['tie']} / {c['worse']}")
        lines.append(f"| {group} | {layer} | {metrics[metric]} | " + " | ".join(cells) + " |")
    for group, layer in collapsed:  # one row: a collapsed layer counts for no method on any metric
        lines.append(f"| {group} | {layer} | every metric | " + " | ".join(["not counted (collapsed)"] * len(others))
                     + " |")
    return lines


def markdown_report(summary: list[dict], comparisons: list[dict], *, collapsed: Sequence[str], header: Sequence[str],
                    dilation: int, plots: Sequence[str] = (), found_verdicts: list[dict] | None = None,
                    refused: Mapping[tuple[str, str], str] | None = None,
                    cost: Mapping[str, float] | None = None) -> str:
    """The Markdown report: verdicts headline, full tables with CIs, comparisons, exclusions (in ``header``), plots.

    Args:
        summary: From ``summarise``.
        comparisons: From ``compare``.
        collapsed: Layers flagged as collapsing to the logit map.
        header: Lines put first (command, runtime, cases, exclusions).
        dilation: The radius used for "M dilated", shown in column names.
        plots: Relative paths of PNGs to show at the end.
        found_verdicts: From ``verdicts`` (headline verdict columns and the verdict table).
        refused: {(method, layer): reason} shown as "n/a" rows.
        cost: {method: seconds per slice} measured by the probe.

    Returns:
        The Markdown text.
    """
    def named(columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(metric, text.format(d=dilation)) for metric, text in columns]

    found_verdicts = found_verdicts or []
    informative = sorted({s["layer"] for s in summary} - set(collapsed) - {"-"})
    note = ("Cells are mean [bootstrap 95 % CI of the mean] over slices (|ρ| cells: ± the spread over the "
            "randomisation draws). ↓ lower is better, ↑ higher is better. Controls in every table: a random map, M "
            "itself, the centre-distance disc (model-free) and, per layer, the uniform map on the layer's receptive "
            "bound. \"beats the disc?\": one-sided paired Wilcoxon signed-rank over slices at "
            f"{ALPHA} (uncorrected). \"vs RF bound\": \"architectural\" unless the map's localisation beats a uniform "
            "map on the pixels where the layer's map can be non-zero. Rows marked ⚠ collapsed are layers whose maps "
            "are the logit map itself: they explain nothing beyond the segmentation.")
    sections = [
        ("Headline: informative layers, verdicts against the controls",
         _table(summary, named(HEADLINE), collapsed, layers=informative, refused=refused,
                extra=_verdict_cells(found_verdicts),
                extra_headers=["MoRF beats the disc?", "LeRF beats the disc?", f"M+{dilation}px vs RF bound"])),
        ("Deletion and insertion: area under the normalized y_M curve", _table(summary, FAITHFULNESS, collapsed)),
        ("Dice of the class near M along the same curves (area under the raw Dice curve)",
         _table(summary, DICE, collapsed)),
        ("Localisation and receptive bound", _table(summary, named(LOCALISATION), collapsed)),
        (("Sanity: |Spearman ρ| on support with the original map after cascading randomisation (mean over the draws; "
          "lower = the map changed more; a sign flip is no change of evidence) and HiResCAM exactness "
          "(|Σ map − (y_M − |M| b_c)| / |y_M − |M| b_c|, pre-ReLU)"),
         _table(summary, SANITY, collapsed)),
        ("Every verdict (paired Wilcoxon over slices)", _verdict_table(found_verdicts)),
        (f"{table_label(BASELINE)} against the others, per slice: better / tie / worse "
         f"(tie: within {TIE_TOLERANCE})",
         _comparison_table(comparisons, dict(named(FAITHFULNESS + LOCALISATION[:5] + SANITY[:1])))),
    ]
    if cost:
        sections.insert(1, ("Cost per slice (probe on this machine, all layers of the method)",
                            ["| method | seconds per slice |", "|---|---|"]
                            + [f"| {table_label(k)} | {v:.3f} |" for k, v in cost.items()]))
    lines = [*header, "", note]
    for title, table in sections:
        lines += ["", f"## {title}", "", *table]
    lines += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _verdict_table(found: list[dict]) -> list[str]:
    if not found:
        return ["No verdicts (no paired slices)."]
    lines = ["| group | method | layer | metric | control | n | p (map better) | p (control better) | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in found:
        lines.append(f"| {v['group']} | {table_label(v['method'])} | {_layer_label(v['layer'], ())} | {v['metric']} | "
                     f"{v['control']} | {v['n']} | {v['p_better']:.3g} | {v['p_worse']:.3g} | {v['verdict']} |")
    return lines
