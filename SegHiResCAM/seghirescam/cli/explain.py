"""``seghirescam demo`` and ``seghirescam explain``: a CT in, heatmaps, panels and a summary out."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from seghirescam.atomic import write_json_atomic
from seghirescam.ct.cases import PreparedCase, prepare_case, read_label_names
from seghirescam.cam.engine import DEFAULT_METHODS
from seghirescam.cam.layers import default_layers
from seghirescam.cam.pixel_sets import DEFAULT_POINT_RADIUS, FILE_PIXEL_SETS, PIXEL_SETS
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION, NORMALIZATIONS, help_text
from seghirescam.cli.method_option import add_method_option
from seghirescam.models.loading import LoadedModel, load_default_model, load_model
from seghirescam.ct.outputs import write_case_outputs
from seghirescam.ct.pipeline import explain_ct, predict_ct
from seghirescam.imaging.volumes import Volume, write_volume

__all__ = ["add_demo", "add_explain", "add_point_radius_option", "run_demo", "run_explain", "DEMO_CASE"]

DEMO_CASE = {"seed": 7, "shape": (48, 160, 160), "spacing": (2.2, 2.2, 4.0)}
DEMO_EXTRA_LAYERS = ("dec2",)  # the demo shows the default layer and, beside it, a shallower one of the shipped model


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--model", type=Path, help="model weights (.safetensors, .pt state dict, TorchScript); "
                        "default: the shipped kidney U-Net")
    parser.add_argument("--card", type=Path, help="model card JSON (default: <model>.card.json)")
    add_method_option(parser, default=DEFAULT_METHODS)
    parser.add_argument("--layer", action="append", help="repeatable; default: bottleneck, else the middle one of "
                        "the card's layers")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--batch-size", default="auto", help="slices per batch, or auto")
    parser.add_argument("--normalize", default=DEFAULT_NORMALIZATION, choices=list(NORMALIZATIONS),
                        help=help_text(NORMALIZATIONS))


def add_point_radius_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--point-radius`` (default ``DEFAULT_POINT_RADIUS``)."""
    parser.add_argument("--point-radius", type=int, default=DEFAULT_POINT_RADIUS,
                        help=f"in-plane disc radius (pixels) around a point, on its own slice; 0: the voxel alone "
                        f"(default: {DEFAULT_POINT_RADIUS})")


def add_demo(commands: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    parser = commands.add_parser("demo", help="explain kidney and tumour on the embedded phantom case")
    _common(parser)


def add_explain(commands: argparse._SubParsersAction) -> None:
    """Register ``explain``."""
    parser = commands.add_parser("explain", help="explain a segment of a CT file (NIfTI, NRRD, DICOM folder)")
    _common(parser)
    parser.add_argument("--ct", type=Path, required=True, help="CT file or DICOM folder (HU)")
    parser.add_argument("--seg", type=Path, required=True, help="label file; resampled onto the CT if needed")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--label", type=int, nargs="+", help="label value(s) of the segment")
    which.add_argument("--segment", help="segment name (from --label-names, else the card's class names)")
    parser.add_argument("--label-names", type=Path, help="JSON {value: name} for the label file")
    parser.add_argument("--target-class", help="class name or index (default: from the segment's name)")
    parser.add_argument("--pixel-set", default="segment", choices=FILE_PIXEL_SETS,
                        help=help_text(PIXEL_SETS, FILE_PIXEL_SETS))
    parser.add_argument("--point", help="I,J,K voxel index of the CT for --pixel-set point")
    add_point_radius_option(parser)
    parser.add_argument("--format", default=".nrrd", choices=(".nrrd", ".nii.gz", ".mha"))


def _load(args: argparse.Namespace) -> LoadedModel:
    return load_model(args.model, args.card) if args.model else load_default_model()


def _engine_options(args: argparse.Namespace) -> dict:
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    return {"methods": tuple(args.method or DEFAULT_METHODS), "device": args.device,
            "batch_size": batch, "normalize": args.normalize}


class _Bar:
    """A tqdm bar fed by the engine's progress(done, total) callback."""

    def __init__(self, description: str) -> None:
        self.description, self.bar = description, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, unit="slice", leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _explain_target(out: Path, case: PreparedCase, loaded: LoadedModel, target: str, layers, options: dict,
                    extension: str = ".nrrd") -> dict:
    bar = _Bar(f"explaining {target}")
    try:
        result = explain_ct(case.ct, case.mask, loaded, case.target_class, layers=layers, progress=bar, **options)
    finally:
        bar.close()
    return write_case_outputs(out, case, result, target, extension=extension)


def run_demo(args: argparse.Namespace) -> int:
    """Generate the demo phantom, predict it, explain kidney and tumour; write everything."""
    from seghirescam.synthetic.phantom import make_phantom

    started = time.perf_counter()
    loaded = _load(args)
    phantom = make_phantom(DEMO_CASE["seed"], shape=DEMO_CASE["shape"], spacing=DEMO_CASE["spacing"], tumor=True)
    ct = Volume(phantom.ct, phantom.geometry)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    prediction = predict_ct(ct, loaded, device=args.device)
    files = {"ct": str(write_volume(ct, out / "ct.nrrd")),
             "reference_labels": str(write_volume(Volume(phantom.labels, ct.geometry), out / "reference_labels.nrrd")),
             "predicted_segmentation": str(write_volume(Volume(prediction, ct.geometry), out / "prediction.nrrd"))}
    options, records = _engine_options(args), []
    for target in ("kidney", "tumor"):
        c = loaded.card.classes.index(target)
        mask, source = prediction == c, "the model's prediction"
        if not mask.any():
            mask, source = phantom.labels == c, "the reference label (the model predicted none)"
        case = PreparedCase(ct, mask, mask, target, [c], c)
        layers = args.layer or (*default_layers(loaded.card.layers), *DEMO_EXTRA_LAYERS)
        record = _explain_target(out, case, loaded, target, layers, options)
        records.append({**record, "pixel_set": source})
    summary = {"case": {"phantom": DEMO_CASE, "tumor": True}, "model": str(loaded.path), "files": files,
               "targets": records, "seconds": round(time.perf_counter() - started, 2)}
    _print_summary(write_json_atomic(out / "summary.json", summary), files, records)
    return 0


def _print_summary(summary_path: Path, files: dict, records: list[dict]) -> None:
    for name, path in files.items():
        print(f"{name:24s} {path}")
    for record in records:
        print(f"{record['target']}: {record['slices_explained']} slices explained "
              f"({record['slices_skipped_empty_m']} skipped, empty M) in {record['seconds']} s on {record['device']}")
        for name, path in record["files"].items():
            print(f"  {name:32s} {path}")
    print(f"summary                  {summary_path}")


def run_explain(args: argparse.Namespace) -> int:
    """Explain one segment of a CT file; write heatmaps with the CT's geometry."""
    started = time.perf_counter()
    loaded = _load(args)
    point = [int(v) for v in args.point.split(",")] if args.point else None
    case = prepare_case(args.ct, args.seg, loaded, label_values=args.label, segment_name=args.segment,
                        label_names=read_label_names(args.label_names) if args.label_names else None,
                        target_class=args.target_class, pixel_set=args.pixel_set, point=point,
                        point_radius=args.point_radius, device=args.device)
    target = case.segment_name.replace(" ", "_")
    record = _explain_target(args.out, case, loaded, target, args.layer, _engine_options(args), extension=args.format)
    summary = {"ct": str(args.ct), "seg": str(args.seg), "segment": case.segment_name,
               "label_values": case.label_values, "target_class": loaded.card.classes[case.target_class],
               "pixel_set": args.pixel_set, "model": str(loaded.path), "targets": [record],
               "seconds": round(time.perf_counter() - started, 2)}
    _print_summary(write_json_atomic(args.out / "summary.json", summary), {}, [record])
    return 0

