"""GPU check: the engine on one CUDA GPU at paper size, in under 5 minutes; prints ONE JSON line.

Measured, interleaved over ``--rounds`` (order rotated per round, medians of per-round ratios):

- a paper-width U-Net (widths 64-1024, depth 5, random weights) on a 600 x 512 x 512 float32 volume,
  M on every slice, both maps (Seg-HiRes-Grad CAM, Seg-Grad CAM) at the bottleneck, in fp32 and bf16:
  the engine (``explain_volume``), its floor (forward of the slices in the engine's batches + the
  backward to the layer, no parameter gradients; ``bench_engine.floor``), and pytorch-grad-cam per
  slice on the first ``--subset`` slices (``bench_engine.gradcam_loop``, torchvision stubbed);
  peak GPU memory of each (``torch.cuda.max_memory_allocated``), and the bf16 maps' deviation from
  fp32 (max |bf16 - fp32| / max fp32, per method);
- an nnU-Net v2 3d_fullres model (the tiny results folder of ``Testing/nnunet_folders.py``) explaining a
  KiTS-size synthetic CT (``bench_nnunet_kits_memory.make_kits_like_ct``) on the GPU: seconds, peak GPU
  memory, tiles.

Without CUDA it refuses (exit 2) unless ``--dry-run``, which runs the same code on the CPU at tiny
sizes (widths 4-64, 6 x 64 x 64, a 24 x 64 x 64 CT), so the script is known to work end to end
(``Testing/test_benchmarks_gpu_check.py``). ``benchmarks/gpu_check.sh`` is the entry point.

    python benchmarks/gpu_check.py [--dry-run] [--rounds 3] [--subset 8] [--work DIR] [--no-nnunet]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

METHODS = ("seg-hires-grad-cam", "seg-grad-cam")
LAYER = "bottleneck"
TARGET = 1


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (this process's and its children's) to stderr, so that the one JSON
    line is the only thing on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device, run: Callable[[], object]) -> tuple[object, float, int]:
    """(result, seconds, peak bytes allocated on the GPU above the start; 0 on the CPU) of one call."""
    import torch

    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    result = run()
    _synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) - start if device.type == "cuda" else 0
    return result, seconds, int(peak)


def unet_check(device, dry_run: bool, rounds: int, subset: int) -> dict:
    """Engine, floor and pytorch-grad-cam on the paper-width U-Net, fp32 and bf16."""
    import torch

    from bench_engine import floor, gradcam_loop, install_gradcam
    from seghirescam import UNet2D, explain_volume

    widths = (4, 8, 16, 32, 64) if dry_run else (64, 128, 256, 512, 1024)
    shape = (6, 64, 64) if dry_run else (600, 512, 512)
    torch.manual_seed(0)
    model = UNet2D(1, 4, list(widths)).to(device).eval()
    volume = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    mask = np.zeros(shape, bool)
    mask[:, shape[1] // 3: shape[1] // 2, shape[2] // 4: shape[2] // 2] = True
    part = min(subset, shape[0])
    sub_volume, sub_mask = volume[:part], mask[:part]
    precisions = ("fp32", "bf16")

    def engine(precision: str):
        return explain_volume(model, volume, mask, TARGET, layers=(LAYER,), methods=METHODS, device=device,
                              autocast=None if precision == "fp32" else precision)

    batches = {p: engine(p).batch_size for p in precisions}  # warm-up; the batch sizes "auto" picks
    variants: dict[str, Callable[[], object]] = {}
    for p in precisions:
        variants[f"engine {p}"] = lambda p=p: engine(p)
        variants[f"floor {p}"] = lambda p=p: floor(model, volume, mask, LAYER, batches[p], False, device,
                                                   None if p == "fp32" else p)
    if install_gradcam():
        variants["grad-cam fp32 subset"] = lambda: gradcam_loop(model, sub_volume, sub_mask, LAYER, device)
        variants["engine fp32 subset"] = lambda: explain_volume(model, sub_volume, sub_mask, TARGET, layers=(LAYER,),
                                                                methods=METHODS, device=device)
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int] = {}
    last: dict[str, object] = {}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            result, took, peak = _peak_memory(device, variants[name])
            seconds[name].append(took)
            peaks[name] = max(peaks.get(name, 0), peak)
            if name.startswith("engine") and not name.endswith("subset"):
                last[name] = result

    def ratio(top: str, bottom: str) -> float | None:
        if top not in seconds or bottom not in seconds:
            return None
        return round(statistics.median(a / b for a, b in zip(seconds[top], seconds[bottom])), 3)

    deviation = {}
    for method in METHODS:
        exact, preview = last["engine fp32"][(method, LAYER)], last["engine bf16"][(method, LAYER)]
        deviation[method] = float(np.abs(preview - exact).max() / max(float(exact.max()), 1e-30))
    return {"widths": list(widths), "shape": list(shape), "layer": LAYER, "methods": list(METHODS),
            "slices_explained": int(mask.any(axis=(1, 2)).sum()), "batch_size": batches,
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "median_seconds": {name: round(statistics.median(v), 4) for name, v in seconds.items()},
            "slices_per_second": {name: round((part if "subset" in name else shape[0]) / statistics.median(v), 2)
                                  for name, v in seconds.items()},
            "engine_over_floor": {p: ratio(f"engine {p}", f"floor {p}") for p in precisions},
            "fp32_over_bf16_engine": ratio("engine fp32", "engine bf16"),
            "gradcam_per_slice_over_engine": ratio("grad-cam fp32 subset", "engine fp32 subset"),
            "peak_gpu_mb": {name: round(v / 2**20) for name, v in peaks.items()},
            "bf16_max_deviation_of_max": deviation}


def nnunet_check(device, dry_run: bool, work: Path) -> dict:
    """One nnU-Net 3d_fullres explanation of a KiTS-size synthetic CT (tiny model, its own plans)."""
    from bench_nnunet_kits_memory import ensure_folders, make_kits_like_ct, set_nnunet_env

    set_nnunet_env(work)
    folder = ensure_folders(work)["3d_fullres"]
    from seghirescam.imaging.geometry import Geometry
    from seghirescam.imaging.volumes import Volume
    from seghirescam.models.nnunet import load_nnunet_model

    shape, spacing = ((24, 64, 64), (3.0, 3.0, 4.0)) if dry_run else ((600, 512, 512), (0.8, 0.8, 1.0))
    ct, mask, _kidneys = make_kits_like_ct(shape, spacing)
    volume = Volume(ct, Geometry(spacing, (0.0, 0.0, 0.0)))
    model = load_nnunet_model(folder)
    result, seconds, peak = _peak_memory(device, lambda: model.explain_ct(volume, mask, TARGET, methods=METHODS,
                                                                           device=str(device)))
    return {"configuration": "3d_fullres", "shape": list(shape), "spacing_ijk": list(spacing),
            "m_voxels": int(mask.sum()), "seconds": round(seconds, 2), "peak_gpu_mb": round(peak / 2**20),
            "tiles_run": result.extra.get("tiles_run"), "tiles_total": result.extra.get("tiles_total")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to check the script end to end")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subset", type=int, default=8, help="slices pytorch-grad-cam explains one by one")
    parser.add_argument("--work", type=Path, help="folder for the tiny nnU-Net results (default: a temporary one)")
    parser.add_argument("--no-nnunet", action="store_true", help="leave the nnU-Net check out")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: needs a machine with a CUDA GPU (torch.cuda.is_available() is False here); "
              "use --dry-run for a tiny run on the CPU", file=sys.stderr)
        return 2
    started = time.perf_counter()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        from seghirescam.cam import runtime

        runtime.cpu_supports_bf16 = lambda: True  # dry run only: emulated bf16, to exercise the bf16 path
    report = {"dry_run": args.dry_run, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "rounds": args.rounds}
    with _stdout_to_stderr():
        report["unet"] = unet_check(device, args.dry_run, args.rounds, args.subset)
        if not args.no_nnunet:
            with tempfile.TemporaryDirectory() as temporary:
                report["nnunet"] = nnunet_check(device, args.dry_run, args.work or Path(temporary))
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
