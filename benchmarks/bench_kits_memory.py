"""Benchmark: peak memory and speed of one KiTS-size case (512 x 512 x 600) on the CPU.

A phantom CT of 600 slices of 512 x 512 (int16, 300 MB) and its labels are generated in a
separate process, 64 slices at a time (a 64-slice phantom tiled along the axial axis, so making
the data does not dominate the figures), and written to disk. Each measurement then runs in a
fresh child process, so its peak resident memory (``ru_maxrss``) is the case's own:

  explain  read CT + labels, build M (kidney), ``pipeline.explain_ct``    (the explain step)
  case     ``batch_case.process_case``: hash inputs, read, explain, write heatmaps, panel, record

each at the default settings (two methods, bottleneck, float32 maps) and with float16 maps.
``--orientation kits`` stores the CT as the KiTS23 NIfTI files do (axial axis last in numpy
order, direction IPL), which exercises the reorientation path; ``--orientation both`` runs the two
layouts interleaved over ``--rounds`` (axial, kits, then kits, axial, ...) and prints the per-round
ratios kits / axial of the explain time and of the peak memory (medians).

    python benchmarks/bench_kits_memory.py [--slices 600] [--size 512] [--orientation axial|kits|both]
        [--rounds 1] [--band 192] [--model FILE] [--work DIR] [--runs explain,case] [--dtypes float32,float16]

Uses the shipped model when present, else an untrained U-Net of the default architecture
(speed and memory do not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TILE = 64
KITS_IPL = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # LPS direction: i -> Inferior, j -> Posterior, k -> Left


def _prepare(work: Path, slices: int, size: int, orientation: str, band: int) -> tuple[Path, Path]:
    """Write the phantom's CT and labels (uncompressed NRRD); reuse them when present.

    The CT is a 64-slice phantom (2.5 mm apart) tiled along the axial axis; its labels are
    kept in the central ``band`` slices only (0: everywhere), so M spans a kidney-sized part
    of the volume as in a real case (three tiles: about 144 slices with kidney).
    """
    from seghirescam.imaging.geometry import Geometry
    from seghirescam.synthetic.phantom import make_phantom
    from seghirescam.imaging.volumes import Volume, write_volume

    tag = f"{size}x{size}x{slices}_{orientation}_band{band}"
    ct_path, labels_path = work / f"ct_{tag}.nrrd", work / f"labels_{tag}.nrrd"
    if ct_path.exists() and labels_path.exists():
        return ct_path, labels_path
    tile = make_phantom(11, shape=(TILE, size, size), spacing=(400 / size, 400 / size, 2.5), tumor=True)
    ct = np.empty((slices, size, size), np.int16)
    labels = np.empty((slices, size, size), np.uint8)
    for start in range(0, slices, TILE):
        n = min(TILE, slices - start)
        ct[start:start + n], labels[start:start + n] = tile.ct[:n], tile.labels[:n]
    del tile
    if band:
        start = max(0, (slices - band) // 2)
        labels[:start], labels[start + band:] = 0, 0
    spacing = (400 / size, 400 / size, 1.0)
    if orientation == "kits":  # numpy (k, j, i) = (left-right, posterior, inferior): the axial axis last
        ct, labels = np.ascontiguousarray(ct.transpose(2, 1, 0)[:, :, ::-1]), np.ascontiguousarray(
            labels.transpose(2, 1, 0)[:, :, ::-1])
        geometry = Geometry((1.0, 400 / size, 400 / size), (0.0, 0.0, 0.0), KITS_IPL)
    else:
        geometry = Geometry(spacing, (0.0, 0.0, 0.0))
    write_volume(Volume(ct, geometry), ct_path, compress=False)
    write_volume(Volume(labels, geometry), labels_path, compress=False)
    return ct_path, labels_path


def _model(path: str | None, work: Path) -> Path:
    from seghirescam.models.loading import default_model_path

    if path:
        return Path(path)
    if default_model_path().exists():
        return default_model_path()
    import torch

    from seghirescam import UNet2D
    from seghirescam.models.loading import save_model, unet_card
    from seghirescam.synthetic.train import DEFAULT_WIDTHS

    torch.manual_seed(0)
    model = UNet2D(1, 4, DEFAULT_WIDTHS).eval()
    card = unet_card(model, "untrained-default-architecture", ("background", "kidney", "tumor", "cyst"),
                     hu_clip=(-200, 300), mean=40, std=120)
    return save_model(model, card, work / "untrained.safetensors")


class _RSSPeak:
    """Sampled resident memory of this process (every 10 ms) during a block."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self) -> _RSSPeak:
        def sample() -> None:
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, self.process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _child(config: dict) -> dict:
    """One measurement in this (fresh) process."""
    from seghirescam.models.loading import load_model

    loaded = load_model(config["model"])
    started_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    if config["run"] == "explain":
        from seghirescam.ct.cases import prepare_case
        from seghirescam.ct.pipeline import explain_ct

        with _RSSPeak() as sampled:
            case = prepare_case(config["ct"], config["labels"], loaded, label_values=[1], target_class="kidney",
                                device="cpu")
            before_explain = time.perf_counter()
            result = explain_ct(case.ct, case.mask, loaded, case.target_class, device="cpu",
                                map_dtype=np.dtype(config["dtype"]))
        slices, explain_s, device = len(result.slices_explained), time.perf_counter() - before_explain, result.device
        batch = result.batch_size
    else:
        from seghirescam.cohort.case_runner import process_case
        from seghirescam.cohort.settings import BatchSettings
        from seghirescam.cohort.manifest import CaseRow

        row = CaseRow("kits", Path(config["ct"]), Path(config["labels"]), "1", (1,), None, None, "kidney", 2)
        settings = BatchSettings(model=str(config["model"]), device="cpu", map_dtype=config["dtype"])
        with _RSSPeak() as sampled:
            record = process_case(row, settings, config["out"])
        if record["status"] != "ok":
            raise RuntimeError(f"the case failed: {record['error']}")
        slices, explain_s, device = record["slices_explained"], record["explain_seconds"], record["device"]
        batch = record["batch_size"]
    return {"run": config["run"], "dtype": config["dtype"], "orientation": config["orientation"],
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3),
            "sampled_peak_gb": round(sampled.peak / 1e9, 3), "rss_after_model_load_gb": round(started_rss / 1e9, 3),
            "slices_explained": slices, "explain_seconds": round(explain_s, 1),
            "slices_per_second": round(slices / explain_s, 2), "total_seconds": round(time.perf_counter() - started, 1),
            "device": device, "batch_size": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--orientation", default="axial", choices=("axial", "kits", "both"))
    parser.add_argument("--rounds", type=int, default=1, help="repetitions (interleaved with --orientation both)")
    parser.add_argument("--model", help="weights file (default: the shipped model, else an untrained one)")
    parser.add_argument("--work", type=Path, help="folder for the phantom files (default: a temporary folder)")
    parser.add_argument("--runs", default="explain,case")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--band", type=int, default=192, help="central slices that keep labels (0: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    if args.prepare:
        import torch

        work = Path(args.prepare)
        started = time.perf_counter()
        ct, labels = _prepare(work, args.slices, args.size, args.orientation, args.band)
        model = _model(args.model, work)
        print(json.dumps({"ct": str(ct), "labels": str(labels), "model": str(model), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - started)}))
        return
    # This process stays small: a child's ru_maxrss starts from its parent's size at fork time.
    orientations = ("axial", "kits") if args.orientation == "both" else (args.orientation,)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        prepared = {}
        for orientation in orientations:
            command = [sys.executable, __file__, "--prepare", str(work), "--slices", str(args.slices), "--size",
                       str(args.size), "--orientation", orientation, "--band", str(args.band)]
            prepared[orientation] = json.loads(subprocess.run(
                command + (["--model", args.model] if args.model else []), check=True, capture_output=True,
                text=True).stdout.strip().splitlines()[-1])
            print(f"phantom {args.size} x {args.size} x {args.slices} ({orientation}, labels in {args.band or 'all'} "
                  f"slices): {prepared[orientation]['ct']}; model {prepared[orientation]['model']}; torch "
                  f"{prepared[orientation]['torch']}, {prepared[orientation]['threads']} CPU threads; load average "
                  f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
        results: dict[tuple[str, str, str], list[dict]] = {}
        for round_index in range(args.rounds):
            order = orientations if round_index % 2 == 0 else orientations[::-1]
            for run in args.runs.split(","):
                for dtype in args.dtypes.split(","):
                    for orientation in order:
                        config = {"run": run, "dtype": dtype, "ct": prepared[orientation]["ct"],
                                  "labels": prepared[orientation]["labels"], "model": prepared[orientation]["model"],
                                  "orientation": orientation, "out": str(work / f"out-{run}-{dtype}-{orientation}")}
                        shutil.rmtree(config["out"], ignore_errors=True)  # a finished case would be skipped
                        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)], check=True,
                                              capture_output=True, text=True)
                        line = done.stdout.strip().splitlines()[-1]
                        results.setdefault((run, dtype, orientation), []).append(json.loads(line))
                        print(line, flush=True)
        if len(orientations) == 2:
            for (run, dtype, orientation), axial in results.items():
                if orientation != "axial":
                    continue
                kits = results[(run, dtype, "kits")]
                for field in ("explain_seconds", "peak_rss_gb"):
                    ratios = [k[field] / a[field] for k, a in zip(kits, axial)]
                    print(f"{run} {dtype}: kits / axial {field} per round {[round(r, 3) for r in ratios]}, "
                          f"median {statistics.median(ratios):.3f}")
        print(f"load average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

if __name__ == "__main__":
    main()
