"""The work of ``seghirescam evaluate``: build the targets, run the evaluation, write tables, plots and run.json.

Writes per_slice.csv, summary.csv, comparisons.csv, evaluation.md, curves_<layer>.png, curves.npz
and run.json into the output folder, each atomically.
"""


from __future__ import annotations

import argparse
import platform
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from seghirescam.atomic import atomic_path, write_json_atomic, write_text_atomic
from seghirescam.cam.method_info import display_name
from seghirescam.evaluation.runner import EvaluationConfig, TargetResult, run_evaluation
from seghirescam.evaluation.cases import (PHANTOM_SEEDS, PHANTOM_SHAPE, PHANTOM_SPACING, REAL_CT_SLAB, EvalTarget,
                               phantom_targets, real_ct_targets)
from seghirescam.evaluation.plots import plot_curves, plot_sanity
from seghirescam.evaluation.report import compare, markdown_report, summarise, write_csv
from seghirescam.evaluation.faithfulness import uniform_fractions
from seghirescam.models.loading import default_model_path, load_default_model, load_model
from seghirescam.evaluation.sanity import randomisation_stages

__all__ = ["run_evaluate", "write_evaluation"]


def _joined(names: Iterable[str]) -> str:
    """Returns: "A", "A and B", "A, B and C"."""
    names = list(names)
    return " and ".join(filter(None, (", ".join(names[:-1]), names[-1]))) if names else "no method"


def _pooled(results: list[TargetResult], targets: list[EvalTarget]):
    curves: dict[tuple, list[np.ndarray]] = defaultdict(list)
    sanity: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for target, result in zip(targets, results):
        for key, stack in result.curves.items():
            curves[(target.group, *key)].append(stack)
        for key, per_stage in result.sanity.items():
            for stage, values in per_stage.items():
                sanity[key][stage].extend(values.tolist())
    return {k: np.concatenate(v) for k, v in curves.items()}, sanity


def write_evaluation(out: Path, results: list[TargetResult], targets: list[EvalTarget], config: EvaluationConfig, *,
                     seconds: float, command: str, model_name: str, stages: list[str]) -> dict:
    """Write the tables, plots and run record of an evaluation.

    Args:
        out: Output folder (created).
        results, targets: From ``run_evaluation``, in the same order.
        config: The settings used.
        seconds: Runtime.
        command: The command that made the run.
        model_name: Shown in the report.
        stages: The randomisation cascade's stage names.

    Returns:
        The run record (also written as run.json).
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for result in results for row in result.rows]
    collapsed = sorted({layer for r in results for layer, flag in r.collapsed.items() if flag})
    summary, comparisons = summarise(rows), compare(rows, collapsed)
    counts = {t.name: r.counts for t, r in zip(targets, results)}

    def total(key: str) -> int:
        return sum(c.get(key, 0) for c in counts.values())

    groups = list(dict.fromkeys(t.group for t in targets))
    curves, sanity = _pooled(results, targets)
    fractions = uniform_fractions(config.steps)
    plots = [plot_curves(out / f"curves_{layer}.png", curves, fractions, layer, groups).name for layer in config.layers]
    if config.sanity:
        plots.append(plot_sanity(out / "sanity.png", sanity, stages, config.layers).name)
    source = "reference label" if config.pixel_set == "label" else "model prediction"
    header = [
        f"# Faithfulness of {_joined(display_name(method) for method in config.methods)}", "",
        (f"Made by `{command}` in {seconds / 60:.1f} min on {torch.get_num_threads()} CPU threads "
         f"(torch {torch.__version__}, Python {platform.python_version()})."), "",
        (f"- Model: {model_name}. M: the {source} of the structure. "
         f"Targets: {', '.join(t.name for t in targets)}."),
        (f"- Per target the {config.slices_per_target} slices with the largest M: {total('slices')} slices in all. "
         f"Curves over 0..100% of the slice's pixels in {config.steps} steps, ties broken at random (seed "
         f"{config.seed}); fills: Gaussian blur (sigma {config.blur_sigma} px) and the slice's soft-tissue mean."),
        (f"- Left out of deletion/insertion: {total('y0_le_0')} slices with y_0 <= 0; {total('span_le_0_blur')} "
         f"(blur) and {total('span_le_0_mean')} (tissue mean) more whose fully filled score y_100% >= y_0."),
        f"- Collapsed layers (maps = the logit map): {', '.join(collapsed) or 'none'}.",
        f"- Cascading randomisation stages: {' > '.join(stages) if config.sanity else 'not run (--no-sanity)'}.",
    ]
    text = markdown_report(summary, comparisons, collapsed=collapsed, header=header, dilation=config.dilation,
                           plots=plots)
    write_text_atomic(out / "evaluation.md", text)  # UTF-8 whatever the locale: the report holds ↓, ρ, ⚠
    write_csv(out / "per_slice.csv", rows)
    write_csv(out / "summary.csv", summary)
    write_csv(out / "comparisons.csv", comparisons)
    with atomic_path(out / "curves.npz") as temporary:
        np.savez_compressed(temporary, fractions=fractions, **{"|".join(k): v for k, v in curves.items()})
    record = {"command": command, "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "model": model_name, "config": asdict(config), "counts": counts,
              "collapsed_layers": collapsed, "files": ["evaluation.md", "per_slice.csv", "summary.csv",
                                                       "comparisons.csv", "curves.npz", *plots]}
    write_json_atomic(out / "run.json", record)
    return record


def run_evaluate(args: argparse.Namespace, command: str) -> int:
    """Run ``seghirescam evaluate``; prints where the report is.

    Raises:
        FileNotFoundError: If the model (or the real CT, unless --no-real-ct) is missing.
        ValueError: For settings the evaluation refuses.
    """
    if args.model is None and not default_model_path().is_file():
        raise FileNotFoundError(f"the default model is not at {default_model_path()}; train it with "
                                f"`seghirescam train --out {default_model_path()}` or pass --model FILE")
    if args.model is not None and args.model.is_dir():
        raise ValueError(f"{args.model} is a model folder (nnU-Net, MONAI bundle): `seghirescam explain` and `batch` "
                         "explain it, but `evaluate` measures slice-wise models with a card only, so far")
    loaded = load_model(args.model) if args.model is not None else load_default_model()
    if not args.no_real_ct and not (args.data / "example_ct.nii.gz").is_file():
        raise FileNotFoundError(f"the real CT is not in {args.data}; pass --data DIR or --no-real-ct")
    if args.phantoms < 0 or args.slices < 1:
        raise ValueError("--phantoms must be >= 0 and --slices >= 1")
    config = EvaluationConfig(layers=tuple(args.layers or EvaluationConfig().layers),
                              methods=tuple(args.methods or EvaluationConfig().methods), slices_per_target=args.slices,
                              steps=args.steps, blur_sigma=args.blur_sigma, dilation=args.dilation,
                              pixel_set=args.pixel_set, seed=args.seed, sanity=not args.no_sanity)
    seeds = tuple(PHANTOM_SEEDS[0] + i for i in range(args.phantoms))
    targets = phantom_targets(seeds, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)
    if not args.no_real_ct:
        targets += real_ct_targets(args.data, REAL_CT_SLAB)
    if not targets:
        raise ValueError("nothing to evaluate: --phantoms 0 with --no-real-ct")
    results, seconds = run_evaluation(loaded.model, loaded.card, targets, config)
    stages = [name for name, _ in randomisation_stages(loaded.model)]
    record = write_evaluation(args.out, results, targets, config, seconds=seconds, command=command,
                              model_name=f"{loaded.card.name} ({loaded.path.name})", stages=stages)
    print(f"report: {args.out / 'evaluation.md'} ({record['seconds'] / 60:.1f} min)")
    return 0
