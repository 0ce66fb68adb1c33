"""The one writer of an evaluation's outputs: tables, plots, the report and the run record.

Writes per_slice.csv, summary.csv, verdicts.csv, comparisons.csv, evaluation.md, curves_<layer>.png,
curves.npz, sanity.png and run.json into the output folder, each atomically. Used by the full
evaluation (``command``) and the model-level one (``model_level``).
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from seghirescam.atomic import atomic_path, write_json_atomic, write_text_atomic
from seghirescam.cam.method_info import display_name
from seghirescam.evaluation.cases import EvalTarget, usable_real_ct_slab
from seghirescam.evaluation.config import EvaluationConfig
from seghirescam.evaluation.faithfulness import uniform_fractions
from seghirescam.evaluation.plan import MethodPlan
from seghirescam.evaluation.plots import plot_curves, plot_sanity
from seghirescam.evaluation.report import compare, markdown_report, summarise, verdicts, write_csv
from seghirescam.evaluation.runner import TargetResult

__all__ = ["write_evaluation"]


def _joined(names: Iterable[str]) -> str:
    """Returns: "A", "A and B", "A, B and C"."""
    names = list(names)
    return " and ".join(filter(None, (", ".join(names[:-1]), names[-1]))) if names else "no method"


def _pooled(done: list[tuple[EvalTarget, str, TargetResult]]):
    curves: dict[tuple, list[np.ndarray]] = defaultdict(list)
    sanity: dict[tuple, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for _, _, result in done:
        group = result.rows[0]["group"] if result.rows else None
        for key, stack in result.curves.items():
            curves[(group, *key)].append(stack)
        for key, per_stage in result.sanity.items():
            for stage, values in per_stage.items():
                sanity[(*key, "support")][stage].append(np.asarray(values))
    sanity_out = {key: {stage: np.concatenate(v, axis=-1) for stage, v in per_stage.items()}
                  for key, per_stage in sanity.items()}
    return {k: np.concatenate(v) for k, v in curves.items()}, sanity_out


def write_evaluation(out: Path, done: list[tuple[EvalTarget, str, TargetResult]], config: EvaluationConfig,
                     plan: MethodPlan, *, seconds: float, command: str, model_name: str, stages: list[str],
                     notes: Iterable[str] = ()) -> dict:
    """Write the tables, plots and run record of an evaluation.

    Args:
        out: Output folder (created).
        done: From ``run_evaluation``: (target, source of M, result).
        config: The settings used.
        plan: The methods' probe (refusals, cost, subsampled methods).
        seconds: Runtime.
        command: The command that made the run.
        model_name: Shown in the report.
        stages: The randomisation stages read (head first).
        notes: Extra header lines.

    Returns:
        The run record (also written as run.json).
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for _, _, result in done for row in result.rows]
    collapsed = sorted({layer for _, _, r in done for layer, flag in r.collapsed.items() if flag})
    summary, comparisons = summarise(rows, config.seed), compare(rows, collapsed)
    found = verdicts(rows)
    counts = {t.name if source == config.pixel_sets[0] else f"{t.name} [{source}]": r.counts for t, source, r in done}

    def total(key: str) -> int:
        return sum(c.get(key, 0) for c in counts.values())

    groups = list(dict.fromkeys(r.rows[0]["group"] for _, _, r in done if r.rows))
    curves, sanity = _pooled(done)
    fractions = uniform_fractions(config.steps)
    plots = [plot_curves(out / f"curves_{layer}.png", curves, fractions, layer, groups).name
             for layer in config.layers if curves and (layer not in collapsed or config.curves_at_collapsed)]
    if config.sanity and sanity:
        plots.append(plot_sanity(out / "sanity.png", sanity, stages, config.layers).name)
    real = usable_real_ct_slab()
    expensive = ", ".join(display_name(m) for m in plan.expensive) or "none"
    header = [
        f"# Faithfulness of {_joined(display_name(method) for method in config.methods)}", "",
        (f"Made by `{command}` in {seconds / 60:.1f} min on {torch.get_num_threads()} CPU threads "
         f"(torch {torch.__version__}, Python {platform.python_version()})."), "",
        f"- Model: {model_name}. M: {' and '.join(config.pixel_sets)} (prediction: the model's own segmentation of "
        "the structure, the predicted components touching the label).",
        f"- Targets: {', '.join(dict.fromkeys(t.name for t, _, _ in done))}; {total('slices')} (target, M) slices "
        f"in all. Phantoms: the {config.slices_per_target} slices with the largest M per target. Real CT: every "
        f"slice holding the kidney in axial slices {real[0]}..{real[1] - 1} (display order; the model trained on "
        f"0..91, the 5 slices next to it are left out){'' if config.real_ct_slices is None else f', at most {config.real_ct_slices} per kidney'}.",
        (f"- Curves over 0..100% of the slice's pixels in {config.steps} steps, ties broken at random (seed "
         f"{config.seed}); fills: ROAD noisy linear imputation (MoRF = deletion, LeRF = insertion read backwards, "
         f"same area), Gaussian blur (sigma {config.blur_sigma} px), the slice's soft-tissue mean; M = prediction: "
         f"{', '.join(config.prediction_fills)} only."),
        (f"- Left out of deletion/insertion: {total('y0_le_0')} slices with y_0 <= 0; "
         + ", ".join(f"{total('span_le_0_' + f)} ({f})" for f in config.fills)
         + " more whose fully filled score y_100% >= y_0. M = prediction empty on every slice for "
         f"{total('empty_m')} target(s)."),
        (f"- Expensive methods (registry cost {' or '.join(config.expensive_costs) or 'none'}: one forward per channel): "
         f"{expensive}; each is evaluated on a "
         f"seeded subsample of {config.expensive_slices} slice(s) per target (their cells have a smaller n); "
         f"randomisation {'on the same subsample' if config.sanity_expensive else 'not run for them (cost)'}."),
        (f"- Randomisation: {config.sanity_seeds} independent re-initialisations per stage on {config.sanity_slices} "
         f"slice(s) per target, read at {', '.join(stages)}." if config.sanity else "- Randomisation: not run."),
        f"- Collapsed layers (maps = the logit map): {', '.join(collapsed) or 'none'}; their curves are "
        f"{'drawn' if config.curves_at_collapsed else 'not measured'}.",
        *[f"- {note}" for note in notes],
    ]
    text = markdown_report(summary, comparisons, collapsed=collapsed, header=header, dilation=config.dilation,
                           plots=plots, found_verdicts=found, refused=plan.refused, cost=plan.seconds_per_slice)
    write_text_atomic(out / "evaluation.md", text)  # UTF-8 whatever the locale: the report holds ↓, ρ, ⚠
    write_csv(out / "per_slice.csv", rows)
    write_csv(out / "summary.csv", summary)
    if found:
        write_csv(out / "verdicts.csv", found)
    if comparisons:
        write_csv(out / "comparisons.csv", comparisons)
    with atomic_path(out / "curves.npz") as temporary:
        np.savez_compressed(temporary, fractions=fractions, **{"|".join(map(str, k)): v for k, v in curves.items()})
    record = {"command": command, "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "model": model_name, "config": asdict(config), "counts": counts,
              "plan": plan.to_json(), "collapsed_layers": collapsed,
              "files": ["evaluation.md", "per_slice.csv", "summary.csv", "verdicts.csv", "comparisons.csv",
                        "curves.npz", *plots]}
    write_json_atomic(out / "run.json", record)
    return record
