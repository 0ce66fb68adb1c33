"""``seghirescam explain``: one segment of a CT file explained; heatmaps, a panel and a summary out."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from seghirescam.cam.vocabulary import FILE_PIXEL_SETS, PIXEL_SETS, help_text
from seghirescam.cli.common import (VOLUME_FORMATS, ProgressBar, add_engine_options, add_model_options,
                                    add_out_options, add_point_radius_option, engine_options, load_model_from_args)

if TYPE_CHECKING:
    from seghirescam.ct.cases import PreparedCase
    from seghirescam.models.explainable import ExplainableModel

__all__ = ["register", "run", "explain_target", "print_summary"]


def register(commands: argparse._SubParsersAction) -> None:
    """Register ``explain``."""
    parser = commands.add_parser("explain", help="explain a segment of a CT file (NIfTI, NRRD, DICOM folder)")
    add_out_options(parser)
    parser.add_argument("--ct", type=Path, required=True, help="CT file or DICOM folder (HU)")
    parser.add_argument("--seg", type=Path, required=True, help="label file; resampled onto the CT if needed")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--label", type=int, nargs="+", help="label value(s) of the segment")
    which.add_argument("--segment", help="segment name (from --label-names, else the model's class names)")
    parser.add_argument("--label-names", type=Path, help="JSON {value: name} for the label file (default: the "
                        "segment names stored in the label file, e.g. a Slicer .seg.nrrd; never the model's classes)")
    parser.add_argument("--target-class", help="class name or index of the model to explain (default: from the "
                        "segment's name; needed when the segment has no name)")
    parser.add_argument("--pixel-set", default="segment", choices=FILE_PIXEL_SETS,
                        help=help_text(PIXEL_SETS, FILE_PIXEL_SETS))
    parser.add_argument("--point", help="I,J,K voxel index of the CT for --pixel-set point")
    add_point_radius_option(parser)
    parser.add_argument("--format", default=".nrrd", choices=VOLUME_FORMATS, help="heatmap file format")
    add_model_options(parser)
    add_engine_options(parser)


def explain_target(out: Path, case: PreparedCase, model: ExplainableModel,
                   layers: list[str] | tuple[str, ...] | None, options: dict, extension: str = ".nrrd") -> dict:
    """Explain one prepared case with a progress bar and write its outputs (``ct.outputs``).

    Returns:
        The target's record (files, statistics, run metadata).
    """
    from seghirescam.ct.outputs import write_case_outputs
    from seghirescam.ct.pipeline import explain_ct

    bar = ProgressBar(f"explaining {case.class_name} over {case.pixel_set_name}",
                      "slice" if model.spatial_dims == 2 else "tile")
    try:
        result = explain_ct(case.ct, case.mask, model, case.target_class, layers=layers, progress=bar, **options)
    finally:
        bar.close()
    return write_case_outputs(out, case, result, extension=extension)


def print_summary(summary_path: Path, summary: dict) -> None:
    """Print where everything was written."""
    for name, path in summary.get("files", {}).items():
        print(f"{name:24s} {path}")
    for record in summary["targets"]:
        print(f"class {record['explained_class']}, M = {record['pixel_set_name']}: {record['slices_explained']} slices "
              f"explained ({record['slices_skipped_empty_m']} skipped, empty M) in {record['seconds']} s on "
              f"{record['device']}")
        for name, path in record["files"].items():
            print(f"  {name:32s} {path}")
    print(f"summary                  {summary_path}")


def run(args: argparse.Namespace) -> int:
    """Explain one segment of a CT file; write heatmaps with the CT's geometry.

    The output folder is checked before any work and written all at once at the end (``ct.run_folder``).
    """
    from seghirescam.ct.cases import prepare_case, read_label_names
    from seghirescam.ct.run_folder import SUMMARY_NAME, RunFolder

    started = time.perf_counter()
    with RunFolder(args.out, overwrite=args.overwrite) as folder:
        model = load_model_from_args(args)
        point = [int(v) for v in args.point.split(",")] if args.point else None
        case = prepare_case(args.ct, args.seg, model, label_values=args.label, segment_name=args.segment,
                            label_names=read_label_names(args.label_names) if args.label_names else None,
                            target_class=args.target_class, pixel_set=args.pixel_set, point=point,
                            point_radius=args.point_radius, device=args.device)
        record = explain_target(folder.staging, case, model, args.layer, engine_options(args), extension=args.format)
        summary = folder.publish({
            "ct": str(args.ct), "seg": str(args.seg), "segment": case.segment_name, "label_values": case.label_values,
            "target_class": case.class_name, "target_class_index": case.target_class, "pixel_set": args.pixel_set,
            "pixel_set_name": case.pixel_set_name, "model": str(model.source), "model_name": model.name,
            "targets": [record], "seconds": round(time.perf_counter() - started, 2)})
    print_summary(folder.out / SUMMARY_NAME, summary)
    return 0
