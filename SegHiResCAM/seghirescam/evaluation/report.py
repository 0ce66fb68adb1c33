"""Tables of the faithfulness evaluation: per-slice rows -> summaries, per-slice comparisons, CSV, Markdown.

Rows are dicts with target, group, slice, method, layer, metric, value (``evaluate.TargetResult``).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from seghirescam.atomic import atomic_path
from seghirescam.evaluation.labels import BASELINE, is_reference, ordered_methods, table_label

__all__ = ["summarise", "compare", "write_csv", "markdown_report", "HIGHER_IS_BETTER", "TIE_TOLERANCE"]

TIE_TOLERANCE = 0.01
HIGHER_IS_BETTER = {
    "deletion_auc_blur": False, "deletion_auc_mean": False, "insertion_auc_blur": True, "insertion_auc_mean": True,
    "deletion_dice_auc_blur": False, "deletion_dice_auc_mean": False, "insertion_dice_auc_blur": True,
    "insertion_dice_auc_mean": True, "mass_in_m": True, "mass_in_m_dilated": True, "pointing": True,
    "pointing_dilated": True, "mass_other": False, "mass_outside_body": False,
    "spearman_head": False, "spearman_layer": False, "spearman_all": False, "spearman_head_support": False,
    "spearman_layer_support": False, "spearman_all_support": False, "exactness_rel_error": False,
}


def summarise(rows: Iterable[dict]) -> list[dict]:
    """n (non-NaN values), mean and median per (group, method, layer, metric), in first-seen order."""
    values: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        values[(row["group"], row["method"], row["layer"], row["metric"])].append(row["value"])
    summary = []
    for (group, method, layer, metric), found in values.items():
        finite = np.asarray(found, dtype=float)
        finite = finite[np.isfinite(finite)]
        mean, median = (float(finite.mean()), float(np.median(finite))) if finite.size else (np.nan, np.nan)
        summary.append({"group": group, "method": method, "layer": layer, "metric": metric, "n": int(finite.size),
                        "mean": round(mean, 4), "median": round(median, 4)})
    return summary


def compare(rows: Iterable[dict], collapsed: Sequence[str] = (), baseline: str = BASELINE) -> list[dict]:
    """Per-slice better / tie / worse counts of the baseline (Seg-HiRes) against every other CAM method present.

    Pairs are the same target, slice, layer and metric; a difference within ``TIE_TOLERANCE`` is a
    tie; "better" follows ``HIGHER_IS_BETTER``. Collapsed layers are marked and not counted. The
    other methods are all CAM methods found in ``rows`` (registered or not; references excluded),
    registered ones in registration order.

    Args:
        rows: Per-slice rows.
        collapsed: Layers whose maps are the logit map.
        baseline: The method counted against the others.

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


def _cell(summary: dict, key: tuple, digits: int = 3) -> str:
    found = summary.get(key)
    if found is None or not found["n"]:
        return "–"
    return f"{found['mean']:.{digits}f} / {found['median']:.{digits}f}"


def _layer_label(layer: str, collapsed: Sequence[str]) -> str:
    return f"{layer} ⚠ collapsed" if layer in collapsed else ("—" if layer == "-" else layer)


def _table(summary: list[dict], columns: Sequence[tuple[str, str]], collapsed: Sequence[str],
           layers: Sequence[str] | None = None) -> list[str]:
    """Markdown table: one row per (group, method, layer), one column per (metric, header)."""
    by_key = {(s["group"], s["method"], s["layer"], s["metric"]): s for s in summary}
    metrics = {m for m, _ in columns}
    row_keys = list(dict.fromkeys((s["group"], s["method"], s["layer"]) for s in summary if s["metric"] in metrics
                                  and (layers is None or s["layer"] in layers)))
    lines = ["| group | method | layer | " + " | ".join(h for _, h in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for group, method, layer in row_keys:
        cells = [_cell(by_key, (group, method, layer, metric)) for metric, _ in columns]
        lines.append(f"| {group} | {table_label(method)} | {_layer_label(layer, collapsed)} | "
                     + " | ".join(cells) + " |")
    return lines


FAITHFULNESS = [("deletion_auc_blur", "deletion, blur ↓"), ("insertion_auc_blur", "insertion, blur ↑"),
                ("deletion_auc_mean", "deletion, tissue mean ↓"),
                ("insertion_auc_mean", "insertion, tissue mean ↑")]
DICE = [("deletion_dice_auc_blur", "Dice deletion, blur ↓"), ("insertion_dice_auc_blur", "Dice insertion, blur ↑"),
        ("deletion_dice_auc_mean", "Dice deletion, mean ↓"),
        ("insertion_dice_auc_mean", "Dice insertion, mean ↑")]
LOCALISATION = [("mass_in_m", "mass in M ↑"), ("mass_in_m_dilated", "mass in M+{d}px ↑"),
                ("pointing", "pointing ↑"), ("pointing_dilated", "pointing M+{d}px ↑"),
                ("mass_other", "mass on other kidney ↓"), ("mass_outside_body", "mass outside body ↓")]
SANITY = [("spearman_layer_support", "ρ on support, down to the layer ↓"),
          ("spearman_head_support", "ρ on support, head random ↓"), ("spearman_all_support", "ρ on support, all random ↓"),
          ("spearman_layer", "ρ all pixels, down to the layer"), ("exactness_rel_error", "exactness rel. error")]
HEADLINE = [("deletion_auc_blur", "deletion, blur ↓"), ("insertion_auc_blur", "insertion, blur ↑"),
            ("mass_in_m_dilated", "mass in M+{d}px ↑"), ("mass_outside_body", "mass outside body ↓"),
            ("pointing", "pointing ↑"), ("spearman_layer_support", "ρ on support, down to the layer ↓")]


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
        if (group, layer, metric, others[0]) not in index or (group, layer) in collapsed:
            continue
        cells = []
        for other in others:
            c = index.get((group, layer, metric, other))
            cells.append("–" if c is None else "not counted (collapsed)" if c["collapsed"]
                         else f"{c['better']} / {c['tie']} / {c['worse']}")
        lines.append(f"| {group} | {layer} | {metrics[metric]} | " + " | ".join(cells) + " |")
    for group, layer in collapsed:  # one row: a collapsed layer counts for no method on any metric
        lines.append(f"| {group} | {layer} | every metric | " + " | ".join(["not counted (collapsed)"] * len(others))
                     + " |")
    return lines


def markdown_report(summary: list[dict], comparisons: list[dict], *, collapsed: Sequence[str], header: Sequence[str],
                    dilation: int, plots: Sequence[str] = ()) -> str:
    """The Markdown report: headline table, full tables, comparisons, exclusions (in ``header``), plots.

    Args:
        summary: From ``summarise``.
        comparisons: From ``compare``.
        collapsed: Layers flagged as collapsing to the logit map.
        header: Lines put first (command, runtime, cases, exclusions).
        dilation: The radius used for "M dilated", shown in column names.
        plots: Relative paths of PNGs to show at the end.

    Returns:
        The Markdown text.
    """
    def named(columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(metric, header.format(d=dilation)) for metric, header in columns]

    informative = sorted({s["layer"] for s in summary} - set(collapsed))
    note = ("Cells are mean / median over slices. ↓ lower is better, ↑ higher is better. Rows marked ⚠ collapsed "
            "are layers whose maps are the logit map itself (method.md): their scores measure the segmentation, "
            "not an explanation, and count for no method.")
    sections = [
        ("Headline (informative layers and references)",
         _table(summary, named(HEADLINE), collapsed, layers=informative)),
        ("Deletion and insertion: area under the normalized y_M curve", _table(summary, FAITHFULNESS, collapsed)),
        ("Dice of the class near M along the same curves (area under the raw Dice curve)",
         _table(summary, DICE, collapsed)),
        ("Localisation", _table(summary, named(LOCALISATION), collapsed)),
        (("Sanity (Spearman ρ with the original map after cascading randomisation; lower = the map changed "
          "more; \"on support\": only pixels where either map is non-zero, since shared zeros inflate ρ over all "
          "pixels) and HiResCAM exactness (|Σ map − (y_M − |M| b_c)| / |y_M − |M| b_c|, pre-ReLU)"),
         _table(summary, SANITY, collapsed)),
        (f"{table_label(BASELINE)} against the others, per slice: better / tie / worse "
         f"(tie: within {TIE_TOLERANCE})",
         _comparison_table(comparisons, dict(named(FAITHFULNESS + LOCALISATION + SANITY[:1])))),
    ]
    lines = [*header, "", note]
    for title, table in sections:
        lines += ["", f"## {title}", "", *table]
    lines += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
