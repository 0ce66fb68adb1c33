"""``seghirescam batch MANIFEST.csv --out DIR``: a cohort of cases, resumable, locally or on Dask.

Exit codes: 0 every case ok, 1 some case failed (see OUT/summary.csv), 2 a bad manifest or
option (nothing was run), 130 interrupted by Ctrl-C (the summary lists what finished).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seghirescam.cli.common import (VOLUME_FORMATS, add_engine_options, add_input_options, add_model_options,
                                    add_point_radius_option, engine_options, positive_int)
from seghirescam.cohort.executors import EXECUTORS

__all__ = ["register", "run"]


def register(commands: argparse._SubParsersAction) -> None:
    """Register ``batch``."""
    parser = commands.add_parser("batch", help="explain a cohort of cases listed in a manifest CSV",
                                 description="Manifest columns: case_id, ct, seg, segment (label values '1;2' or "
                                 "a name); optional point ('I;J;K') and target_class. Relative paths resolve "
                                 "against the manifest's folder. Finished cases are skipped on a re-run.")
    parser.add_argument("manifest", type=Path, help="the manifest CSV")
    parser.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per case)")
    add_input_options(parser)
    add_model_options(parser)
    add_engine_options(parser)
    parser.add_argument("--label-names", type=Path, help="JSON {value: name} for segment names in the manifest")
    add_point_radius_option(parser)
    parser.add_argument("--format", default=".nrrd", choices=VOLUME_FORMATS, help="heatmap file format")
    parser.add_argument("--map-dtype", default="float32", choices=("float32", "float16"),
                        help="maps held in memory (float16 halves it; files stay float32)")
    parser.add_argument("--no-figure", action="store_true", help="skip the PNG panels")
    parser.add_argument("--executor", default="local", choices=list(EXECUTORS),
                        help="; ".join(f"{key}: {text}" for key, text in EXECUTORS.items()))
    parser.add_argument("--scheduler", help="address of a running Dask scheduler (with --executor dask)")
    parser.add_argument("--workers", type=positive_int, help="with --executor dask: start a local Dask cluster of N "
                        "single-threaded workers")


def run(args: argparse.Namespace) -> int:
    """Run ``batch``; returns the exit code (see the module docstring)."""
    from seghirescam.cohort.runner import run_batch
    from seghirescam.cohort.settings import BatchSettings
    from seghirescam.ct.cases import read_label_names

    options = engine_options(args)
    if "autocast" in options and args.executor == "local":  # refuse a precision this machine lacks before any case
        from seghirescam.cam.runtime import check_autocast, resolve_device

        check_autocast(resolve_device(args.device), options["autocast"])
    settings = BatchSettings(model=str(args.model) if args.model else None, card=str(args.card) if args.card else None,
                             folds=tuple(args.folds or ("all",)), checkpoint=args.checkpoint,
                             mirroring=args.mirroring, methods=options["methods"],
                             layers=tuple(args.layer) if args.layer else None, device=args.device,
                             batch_size=args.batch_size, normalize=args.normalize, extension=args.format,
                               map_dtype=args.map_dtype, precision=args.precision, figure=not args.no_figure,
                               point_radius=args.point_radius,
                               label_names=read_label_names(args.label_names) if args.label_names else None,
                               allow_irregular_slices=args.allow_irregular_slices)
    try:
        report = run_batch(args.manifest, args.out, settings, executor=args.executor, scheduler=args.scheduler,
                           workers=args.workers, progress=True)
    except KeyboardInterrupt:
        print(f"seghirescam batch: interrupted; finished cases are in {args.out / 'summary.csv'}", file=sys.stderr)
        return 130
    ok = len(report.records) - len(report.failed)
    reused = sum(bool(r.get("reused")) for r in report.records)
    print(f"{ok} of {len(report.records)} cases ok ({reused} reused from an earlier run); summary: {report.summary}")
    for record in report.records:
        if record["status"] != "ok":
            kept = f" (the outputs of an earlier run are kept in {args.out / record['case_id']})" \
                if record.get("kept_outputs") else ""
            print(f"  failed {record['case_id']}: {record['error']['type']}: {record['error']['message']}{kept}")
    return report.exit_code
