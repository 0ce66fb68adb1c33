"""The worker process of a background run: one prediction + explanation, with progress on stdout.

Run as ``python -m seghirescam.ct.worker JOB_FOLDER`` by ``seghirescam.ct.background``. The
folder holds ``request.json`` (model path and options, target class, layers, methods, device,
batch size, normalisation, pixel set, the CT's geometry) and ``inputs.npz`` (``ct``: the CT,
(k, j, i); ``mask``: M, bool (k, j, i), absent for pixel set "prediction"). The worker writes
``result.npz`` (``map_0``, ``map_1``, ...: the maps, float32 (k, j, i); ``predicted``: uint8
labels for pixel set "prediction") and then ``result.json`` (the map keys and the run's
settings), each atomically, so a killed worker leaves no half-written result.

Each line it prints that starts with ``PROGRESS_PREFIX`` is one JSON message:
``{"stage": "load"|"predict"|"explain"|"write", "done": int, "total": int}``, or at the end
``{"stage": "finished"}`` / ``{"stage": "failed", "error": "...", "type": "ValueError"}``.
No slicer, no qt: the worker needs only the core package, numpy and torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from seghirescam.atomic import atomic_path, write_json_atomic

__all__ = ["PROGRESS_PREFIX", "run_job", "main"]

PROGRESS_PREFIX = "SEGHIRESCAM-WORKER "


def _say(message: dict) -> None:
    print(PROGRESS_PREFIX + json.dumps(message), flush=True)


def _options(raw: dict) -> dict:
    """JSON lists back to the tuples the loaders take (e.g. nnU-Net folds)."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in raw.items()}


def run_job(folder: Path) -> None:
    """Run the job in ``folder`` (see the module docstring) and write its result there.

    Raises:
        Whatever loading, prediction or explanation raises (ValueError, FileNotFoundError, ...).
    """
    request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    with np.load(folder / "inputs.npz") as inputs:
        ct = inputs["ct"]
        mask = inputs["mask"] if "mask" in inputs.files else None
    _say({"stage": "load", "done": 0, "total": 1})
    try:
        from seghirescam.ct.pipeline import explain_ct, predict_ct
        from seghirescam.models.explainable import load_explainable_model
    except (ImportError, OSError) as error:  # a torch that is missing or whose libraries fail to load
        raise RuntimeError(f"PyTorch could not be loaded in the worker process ({type(error).__name__}: {error}). "
                           "Install or repair PyTorch (Slicer: the PyTorch extension's 'PyTorch Utils' module, "
                           "then restart Slicer).") from error
    from seghirescam.imaging.geometry import Geometry
    from seghirescam.imaging.volumes import Volume

    model = load_explainable_model(request["model_path"] or None, **_options(request["model_options"]))
    volume = Volume(ct, Geometry.from_ijk_to_ras(np.asarray(request["ijk_to_ras"], dtype=float)))
    target = int(request["target_class"])
    predicted = None
    if request["pixel_set"] == "prediction":
        _say({"stage": "predict", "done": 0, "total": 0})
        predicted = predict_ct(volume, model, device=request["device"],
                               progress=lambda done, total: _say({"stage": "predict", "done": done, "total": total}))
        mask = predicted == target
        if not mask.any():
            raise ValueError(f"the model predicts no {model.class_names[target]!r} voxel in this CT: "
                             "choose another pixel set or class")
    result = explain_ct(volume, mask, model, target, layers=request["layers"], methods=request["methods"],
                        batch_size=request["batch_size"], device=request["device"], normalize=request["normalize"],
                        progress=lambda done, total: _say({"stage": "explain", "done": done, "total": total}))
    _say({"stage": "write", "done": 0, "total": 1})
    arrays = {f"map_{n}": np.asarray(array, dtype=np.float32) for n, array in enumerate(result.maps.values())}
    if predicted is not None:
        arrays["predicted"] = np.asarray(predicted, dtype=np.uint8)
    with atomic_path(folder / "result.npz") as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
    write_json_atomic(folder / "result.json", {
        "keys": [list(key) for key in result.maps], "device": result.device, "batch_size": result.batch_size,
        "slices_explained": len(result.slices_explained), "model_name": model.name, "model_source": str(model.source)})


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns: 0 when the result was written, 1 when the job failed (reported on stdout)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m seghirescam.ct.worker JOB_FOLDER", file=sys.stderr)
        return 2
    try:
        run_job(Path(argv[0]))
    except Exception as error:  # noqa: BLE001 - reported to the parent as one message
        _say({"stage": "failed", "error": str(error) or type(error).__name__, "type": type(error).__name__})
        return 1
    _say({"stage": "finished"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
