"""``seghirescam demo``: the embedded phantom case, segmented and explained (kidney and tumor)."""

from __future__ import annotations

import argparse
import time

from seghirescam.cli.common import (add_engine_options, add_model_options, add_out_options, engine_options,
                                    load_model_from_args)
from seghirescam.cli.explain import explain_target, print_summary

__all__ = ["register", "run", "DEMO_CASE", "DEMO_EXTRA_LAYERS"]

DEMO_CASE = {"seed": 7, "shape": (48, 160, 160), "spacing": (2.2, 2.2, 4.0)}
DEMO_EXTRA_LAYERS = ("dec2",)  # the demo shows the default layer and, beside it, a shallower one of the shipped model


def register(commands: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    parser = commands.add_parser("demo", help="explain kidney and tumor on the embedded phantom case")
    add_out_options(parser)
    add_model_options(parser)
    add_engine_options(parser)


def run(args: argparse.Namespace) -> int:
    """Generate the demo phantom, predict it, explain kidney and tumor; write everything (``ct.run_folder``)."""
    from seghirescam.ct.cases import PreparedCase
    from seghirescam.ct.pipeline import predict_ct
    from seghirescam.ct.run_folder import SUMMARY_NAME, RunFolder
    from seghirescam.imaging.volumes import Volume, write_volume
    from seghirescam.synthetic.phantom import make_phantom

    started = time.perf_counter()
    with RunFolder(args.out, overwrite=args.overwrite) as folder:
        model = load_model_from_args(args)
        phantom = make_phantom(DEMO_CASE["seed"], shape=DEMO_CASE["shape"], spacing=DEMO_CASE["spacing"], tumor=True)
        ct = Volume(phantom.ct, phantom.geometry)
        out = folder.staging
        prediction = predict_ct(ct, model, device=args.device)
        files = {"ct": str(write_volume(ct, out / "ct.nrrd")),
                 "reference_labels": str(write_volume(Volume(phantom.labels, ct.geometry), out / "reference_labels.nrrd")),
                 "predicted_segmentation": str(write_volume(Volume(prediction, ct.geometry), out / "prediction.nrrd"))}
        options, records = engine_options(args), []
        for target in ("kidney", "tumor"):
            c = model.class_for_segment(target)
            mask, source, name = prediction == c, "the model's prediction", "prediction"
            if not mask.any():
                mask, source, name = phantom.labels == c, "the reference label (the model predicted none)", "reference"
            case = PreparedCase(ct, mask, mask, target, [c], c, model.class_names[c], name)
            extra = tuple(layer for layer in DEMO_EXTRA_LAYERS if layer in model.layers)
            layers = args.layer or (model.default_layer, *extra)
            record = explain_target(out, case, model, layers, options)
            records.append({**record, "pixel_set": source})
        summary = folder.publish({"case": {"phantom": DEMO_CASE, "tumor": True}, "model": str(model.source),
                                  "model_name": model.name, "files": files, "targets": records,
                                  "seconds": round(time.perf_counter() - started, 2)})
    print_summary(folder.out / SUMMARY_NAME, summary)
    return 0
