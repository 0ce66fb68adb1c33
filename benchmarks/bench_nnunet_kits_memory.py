"""Benchmark: peak memory and time of explaining a KiTS-size CT with an nnU-Net v2 model, on the CPU.

A synthetic CT of 600 x 512 x 512 voxels (k, j, i), spacing 0.8 x 0.8 x 1.0 mm (i, j, k), is made
with numpy in slabs (air -1000 HU, a body ellipse ~40 HU, two kidney ellipsoids ~150 HU, Gaussian
noise). M is one kidney (an ellipsoid of about 60 x 100 x 100 voxels), the class is 1 ("kidney"),
the layer is the model's default (the deepest encoder stage), the methods are Seg-HiRes-Grad CAM and
Seg-Grad CAM, the device is the CPU. The models are the tiny but real nnU-Net results folders of
``Testing/nnunet_folders.py`` (built under ``--work`` if missing). Their plans were made for small
training cases at about 3.0 x 1.5 x 1.5 mm (3d_fullres; 1.5 x 1.5 mm in-plane for 2d), so the KiTS-size
CT is resampled much coarser than a real KiTS model's (~0.8 mm) would resample it: the network frame
is smaller than a real model's, while the original-grid steps (reading, resampling from and back to
600 x 512 x 512) are at full size. ``--plans kits`` runs a copy of the folder whose plans ask for
KiTS23-like spacing and patch size (3d_fullres 1.0 x 0.78 x 0.78 mm, 128^3; 2d 0.78 mm, 512^2), with
the same (fully convolutional) weights: the network frame and the tiles are then those of a real
KiTS model, only the features per stage stay tiny. Weights do not change speed or memory.

Each configuration runs in a fresh child process (``--child``). The parent samples the child's
resident memory (psutil, every ``--interval`` seconds) and stops it past ``--rss-limit-gb``; the
child also reports its own ``ru_maxrss`` (the exact peak). The child wraps, only inside itself, the
functions ``NnUNetModel.explain_ct`` calls (``preprocess``, ``mask_to_network_frame``,
``pad_to_patch``, ``explain_tiles``, ``network_frame_to_original``, ``normalize_maps``) and nnU-Net's
``resample_data_or_seg`` and ``insert_crop_into_image``, and logs when each starts and ends; the parent
attributes its RSS samples to those phases by time. No package code is changed.

    python benchmarks/bench_nnunet_kits_memory.py [--configs 3d_fullres,2d] [--shape 600,512,512]
        [--spacing 0.8,0.8,1.0] [--plans tiny|kits] [--ct-dtype int16|float32] [--work DIR] [--out FILE.jsonl]
        [--interval 0.02] [--rss-limit-gb 15] [--tracemalloc]

Prints, per configuration, one JSON line (also appended to ``--out``), then a summary table (peak
RSS, RSS after making the CT and M, seconds of ``explain_ct``, tiles run / total) and a table of the
phases (seconds, RSS at entry, peak RSS during, RSS at exit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ data
def make_kits_like_ct(shape_kji: tuple[int, int, int], spacing_ijk: tuple[float, float, float],
                      dtype: str = "int16", slab: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """A KiTS-size CT and M (one kidney), built slab by slab so that making it stays small.

    Args:
        shape_kji: (slices, rows, columns).
        spacing_ijk: voxel size (i, j, k) in mm.
        dtype: "int16" (as KiTS NIfTI files store HU) or "float32".
        slab: slices generated at a time.
        seed: noise seed.

    Returns:
        (CT (k, j, i), M bool (k, j, i), description of the kidneys).
    """
    nk, nj, ni = shape_kji
    rng = np.random.default_rng(seed)
    ct = np.empty(shape_kji, dtype=np.dtype(dtype))
    mask = np.zeros(shape_kji, dtype=bool)
    jj, ii = np.meshgrid(np.arange(nj, dtype=np.float32), np.arange(ni, dtype=np.float32), indexing="ij")
    body = ((jj - nj / 2) / (0.31 * nj)) ** 2 + ((ii - ni / 2) / (0.43 * ni)) ** 2 < 1
    # kidneys: 60 x 100 x 100 voxels (k, j, i) at 512 x 512 x 600, posterior and left/right of centre
    semi = (0.05 * nk, 50 / 512 * nj, 50 / 512 * ni)
    centres = [(nk / 2, nj / 2 + 0.08 * nj, ni / 2 + s * 0.21 * ni) for s in (-1, 1)]
    for start in range(0, nk, slab):
        stop = min(nk, start + slab)
        block = np.full((stop - start, nj, ni), -1000.0, np.float32)
        block[:, body] = 40.0
        for index, (ck, cj, ci) in enumerate(centres):
            kk = np.arange(start, stop, dtype=np.float32)[:, None, None]
            inside = ((kk - ck) / semi[0]) ** 2 + ((jj - cj) / semi[1]) ** 2 + ((ii - ci) / semi[2]) ** 2 < 1
            block[inside] = 150.0
            if index == 0:
                mask[start:stop] = inside
        block += rng.normal(0.0, 10.0, block.shape).astype(np.float32)
        ct[start:stop] = np.round(block) if ct.dtype.kind == "i" else block
    extent = [int(a.max() - a.min() + 1) for a in np.nonzero(mask)]
    return ct, mask, {"m_voxels": int(mask.sum()), "m_extent_kji": extent, "kidney_centres_kji": centres}


def ensure_folders(work: Path) -> dict[str, Path]:
    """The tiny results folders below ``work/tiny`` (``Testing/nnunet_folders.ensure_tiny_results``)."""
    sys.path.insert(0, str(ROOT / "Testing"))
    import nnunet_folders

    return nnunet_folders.ensure_tiny_results(work / "tiny")


# approximately a real KiTS23 nnU-Net plan (spacing in nnU-Net's (z, y, x) order, patch size)
KITS_PLANS = {"3d_fullres": ([1.0, 0.78125, 0.78125], [128, 128, 128]), "2d": ([0.78125, 0.78125], [512, 512])}


def kits_plans_folder(folder: Path, configuration: str, work: Path) -> Path:
    """A copy of a tiny results folder whose plans ask for KiTS-like spacing and patch size.

    This gives the network frame and the tile sizes of a real KiTS model (the features per stage stay
    tiny): ``nnunet_folders.replanned_copy``.
    """
    sys.path.insert(0, str(ROOT / "Testing"))
    import nnunet_folders

    spacing, patch = KITS_PLANS[configuration]
    return nnunet_folders.replanned_copy(folder, work / "kits_plans" / folder.parent.name / folder.name,
                                         configuration, spacing, patch)


def set_nnunet_env(work: Path) -> None:
    """nnunetv2 warns at import without these; point them at the tiny tree."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(key, str(work / "tiny" / key))
    os.environ.setdefault("nnUNet_compile", "f")


# ------------------------------------------------------------------------------------------ child
class PhaseLog:
    """Wraps functions so that each call logs (time, phase) on entry and exit; nested calls join names."""

    def __init__(self, use_tracemalloc: bool) -> None:
        import psutil

        self.process = psutil.Process()
        self.stack: list[str] = []
        self.events: list[tuple[float, str]] = [(time.time(), "start")]
        self.calls: list[dict] = []
        self.tracemalloc = use_tracemalloc

    def label(self) -> str:
        return "/".join(self.stack) or "other"

    def wrap(self, module: object, name: str, phase: str | None = None) -> None:
        original = getattr(module, name)
        phase = phase or name
        log = self

        def wrapper(*args, **kwargs):
            import tracemalloc

            rss_in = log.process.memory_info().rss
            if log.tracemalloc:
                tracemalloc.reset_peak()
                traced_in = tracemalloc.get_traced_memory()[0]
            log.stack.append(phase)
            log.events.append((time.time(), log.label()))
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - started
                label = log.label()
                log.stack.pop()
                log.events.append((time.time(), f"after:{label}" if not log.stack else log.label()))
                call = {"phase": label, "seconds": round(seconds, 3), "rss_in_gb": round(rss_in / 1e9, 3),
                        "rss_out_gb": round(log.process.memory_info().rss / 1e9, 3)}
                if log.tracemalloc:
                    current, peak = tracemalloc.get_traced_memory()
                    call["numpy_traced_peak_above_entry_gb"] = round((peak - traced_in) / 1e9, 3)
                log.calls.append(call)

        setattr(module, name, wrapper)


def child(config: dict) -> dict:
    """One measurement in this fresh process."""
    import psutil

    set_nnunet_env(Path(config["work"]))
    process = psutil.Process()
    if config["tracemalloc"]:
        import tracemalloc

        tracemalloc.start()
    import torch

    import acvl_utils.cropping_and_padding.bounding_boxes as bounding_boxes
    import nnunetv2.preprocessing.resampling.default_resampling as resampling
    import seghirescam.models.nnunet.model as model_module
    from seghirescam.imaging.geometry import Geometry
    from seghirescam.imaging.volumes import Volume
    from seghirescam.models.nnunet import load_nnunet_model

    rss_imports = process.memory_info().rss
    started = time.perf_counter()
    ct, mask, kidneys = make_kits_like_ct(tuple(config["shape"]), tuple(config["spacing"]), config["ct_dtype"])
    make_seconds = time.perf_counter() - started
    volume = Volume(ct, Geometry(tuple(config["spacing"]), (0.0, 0.0, 0.0)))
    model = load_nnunet_model(config["folder"])
    rss_data = process.memory_info().rss
    log = PhaseLog(config["tracemalloc"])
    # the package is being refactored: wrap whichever of these names the modules have
    targets = [(model_module, name) for name in ("preprocess", "mask_to_network_frame", "pad_to_patch",
                                                 "explain_tiles", "network_frame_to_original", "result_on_ct_grid",
                                                 "normalize_maps")]
    try:
        import seghirescam.models.tiled_result as tiled_result

        targets.append((tiled_result, "normalize_maps"))
    except ImportError:
        pass
    wrapped = [f"{module.__name__}.{name}" for module, name in targets if hasattr(module, name)]
    for module, name in targets:
        if hasattr(module, name):
            log.wrap(module, name)
    log.wrap(resampling, "resample_data_or_seg")
    log.wrap(bounding_boxes, "insert_crop_into_image")
    frame = {}
    original_preprocess = model_module.preprocess

    def preprocess_and_record(*args, **kwargs):
        prepared = original_preprocess(*args, **kwargs)
        frame["network_frame"] = list(prepared.data.shape)
        return prepared

    model_module.preprocess = preprocess_and_record
    log.events.append((time.time(), "explain_ct"))
    started = time.perf_counter()
    result = model.explain_ct(volume, mask, 1, methods=("seg-hires-grad-cam", "seg-grad-cam"), device="cpu",
                              normalize="volume")
    seconds = time.perf_counter() - started
    log.events.append((time.time(), "end"))
    map_bytes = sum(m.nbytes for m in result.maps.values())
    return {"configuration": result.extra["configuration"], "plans": config["plans"], "layer": model.default_layer,
            "patch_size": list(model.loaded.patch_size), "plans_spacing": list(model.loaded.configuration_manager.spacing),
            "ct_shape_kji": list(ct.shape), "ct_dtype": str(ct.dtype), "ct_spacing_ijk": list(config["spacing"]),
            "ct_gb": round(ct.nbytes / 1e9, 3), "m_voxels": kidneys["m_voxels"], "m_extent_kji": kidneys["m_extent_kji"],
            **frame, "seconds": round(seconds, 1), "make_ct_seconds": round(make_seconds, 1),
            "tiles_run": result.extra["tiles_run"], "tiles_total": result.extra["tiles_total"],
            "maps_gb": round(map_bytes / 1e9, 3), "rss_after_imports_gb": round(rss_imports / 1e9, 3),
            "rss_after_ct_m_model_gb": round(rss_data / 1e9, 3),
            "ru_maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3),
            "torch_threads": torch.get_num_threads(), "wrapped": wrapped, "calls": log.calls, "events": log.events}


# ------------------------------------------------------------------------------------------ parent
def run_child(config: dict, interval: float, limit_gb: float) -> dict:
    """Start a child, sample its RSS, stop it past the limit; its JSON result plus the samples."""
    import psutil

    command = [sys.executable, __file__, "--child", json.dumps(config)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    samples: list[tuple[float, int]] = []
    killed = False
    while proc.poll() is None:
        try:
            rss = watched.memory_info().rss
        except psutil.NoSuchProcess:
            break
        samples.append((time.time(), rss))
        if rss > limit_gb * 1e9:
            proc.kill()
            killed = True
            break
        time.sleep(interval)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if killed or proc.returncode != 0:
        return {"configuration": config["configuration"], "error": "killed past the RSS limit" if killed else
                f"exit {proc.returncode}: {err.strip()[-2000:]}",
                "sampled_peak_gb": round(max((s for _, s in samples), default=0) / 1e9, 3)}
    result = json.loads(out.strip().splitlines()[-1])
    result["sampled_peak_gb"] = round(max(s for _, s in samples) / 1e9, 3)
    result["child_wall_seconds"] = round(wall, 1)
    result["phases"] = attribute(samples, result.pop("events"))
    return result


def attribute(samples: list[tuple[float, int]], events: list[tuple[float, str]]) -> list[dict]:
    """Peak sampled RSS and duration per phase label (phases in order of first appearance)."""
    phases: dict[str, dict] = {}
    for index, (start, label) in enumerate(events):
        stop = events[index + 1][0] if index + 1 < len(events) else float("inf")
        peak = max((rss for t, rss in samples if start <= t < stop), default=0)
        entry = phases.setdefault(label, {"phase": label, "seconds": 0.0, "sampled_peak_gb": 0.0})
        if stop != float("inf"):
            entry["seconds"] = round(entry["seconds"] + stop - start, 2)
        entry["sampled_peak_gb"] = max(entry["sampled_peak_gb"], round(peak / 1e9, 3))
    return list(phases.values())


def print_tables(rows: list[dict]) -> None:
    print()
    head = (f"{'configuration':<12} {'patch':<12} {'net frame (C,a0,a1,a2)':<24} {'peak RSS GB':>11} {'ru_maxrss':>9} "
            f"{'RSS CT+M':>8} {'maps GB':>7} {'explain s':>9} {'tiles run/total':>16}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['configuration']:<12} ERROR {r['error'][:200]} (sampled peak {r['sampled_peak_gb']} GB)")
            continue
        print(f"{r['configuration'] + ('*' if r.get('plans') == 'kits' else ''):<12} {'x'.join(map(str, r['patch_size'])):<12} "
              f"{'x'.join(map(str, r.get('network_frame', []))):<24} {r['sampled_peak_gb']:>11.2f} "
              f"{r['ru_maxrss_gb']:>9.2f} {r['rss_after_ct_m_model_gb']:>8.2f} {r['maps_gb']:>7.2f} "
              f"{r['seconds']:>9.1f} {str(r['tiles_run']) + ' / ' + str(r['tiles_total']):>16}")
    if any(r.get("plans") == "kits" for r in rows):
        print("* plans edited to KiTS23-like spacing and patch size (--plans kits)")
    for r in rows:
        if "error" in r:
            continue
        print(f"\nphases of {r['configuration']} (sampled RSS of the child; 'after:X' = the caller's code after X)")
        print(f"  {'phase':<62} {'seconds':>8} {'peak RSS GB':>11}")
        for p in r["phases"]:
            if p["sampled_peak_gb"] == 0 and p["seconds"] < 0.005:
                continue  # no sample fell in it
            print(f"  {p['phase']:<62} {p['seconds']:>8.2f} {p['sampled_peak_gb']:>11.2f}")
        print(f"  calls: {'phase':<55} {'seconds':>8} {'RSS in':>7} {'RSS out':>7}"
              + (" numpy-traced peak above entry" if r["calls"] and "numpy_traced_peak_above_entry_gb" in r["calls"][0]
                 else ""))
        for c in r["calls"]:
            extra = f" {c['numpy_traced_peak_above_entry_gb']:>8.2f}" if "numpy_traced_peak_above_entry_gb" in c else ""
            print(f"         {c['phase']:<55} {c['seconds']:>8.2f} {c['rss_in_gb']:>7.2f} {c['rss_out_gb']:>7.2f}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="3d_fullres,2d", help="nnU-Net configurations to run, comma-separated")
    parser.add_argument("--shape", default="600,512,512", help="CT shape (k, j, i) = slices, rows, columns")
    parser.add_argument("--spacing", default="0.8,0.8,1.0", help="CT spacing (i, j, k) in mm")
    parser.add_argument("--ct-dtype", default="int16", choices=("int16", "float32"), help="CT array dtype")
    parser.add_argument("--work", type=Path, default=Path("/tmp/seghirescam_bench_nnunet"),
                        help="folder for the tiny nnU-Net results (built there if missing)")
    parser.add_argument("--plans", default="tiny", choices=("tiny", "kits"),
                        help="tiny: the folders' own plans (coarse: ~3.0 x 1.5 x 1.5 mm); kits: a copy whose plans ask "
                             "for KiTS23-like spacing and patch (3d_fullres 1.0 x 0.78 x 0.78 mm, 128^3; 2d 0.78 mm, "
                             "512^2), same weights")
    parser.add_argument("--out", type=Path, help="append one JSON line per configuration to this file")
    parser.add_argument("--interval", type=float, default=0.02, help="RSS sampling interval of the child, seconds")
    parser.add_argument("--rss-limit-gb", type=float, default=15.0, help="kill a child whose RSS passes this")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also trace numpy allocations per call (slower; torch tensors are not traced)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    folders = ensure_folders(args.work)
    import torch

    print(f"KiTS-size synthetic CT {args.shape} (k,j,i), spacing {args.spacing} mm (i,j,k), {args.ct_dtype}; "
          f"plans {args.plans}; "
          f"class 1, default layer, Seg-HiRes-Grad + Seg-Grad, CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    rows = []
    for configuration in args.configs.split(","):
        folder = folders[configuration]
        if args.plans == "kits":
            folder = kits_plans_folder(folder, configuration, args.work)
        config = {"configuration": configuration, "folder": str(folder), "work": str(args.work), "plans": args.plans,
                  "shape": [int(v) for v in args.shape.split(",")], "spacing": [float(v) for v in args.spacing.split(",")],
                  "ct_dtype": args.ct_dtype, "tracemalloc": args.tracemalloc}
        row = run_child(config, args.interval, args.rss_limit_gb)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        rows.append(row)
    print_tables(rows)


if __name__ == "__main__":
    main()
