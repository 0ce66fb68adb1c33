"""Benchmark: the engine against its floor and against pytorch-grad-cam's per-slice loop, interleaved.

For each case (model, slice size, pixel set M), every round times each variant once, in a seeded
random order per round (``--order shuffle``, the default), and the ratios are taken within the round;
the table gives the median over rounds (and the range). A shuffled order lets each variant follow a
different one from round to round: with the order only rotated (``--order rotate``), each variant
always runs right after the same one (the engine after pytorch-grad-cam's loop), so whatever a
variant leaves behind (freed memory, caches) always falls on the same successor. Variants:

  engine       ``explain_volume`` with its defaults (batch "auto", channels-last on the CPU), both
               default methods at the layer, from one forward and one backward per batch
  engine NCHW  the same with ``channels_last=False``
  floor        the least any method needs: forward of the slices holding M, in the engine's batches,
               plus the backward from y_M down to the layer with no parameter gradient (NCHW)
  floor CL     the same on the channels-last copy of the model (``runtime.channels_last_model``)
  grad-cam     pytorch-grad-cam 1.5.7 per slice and per method (GradCAM for Seg-Grad CAM, HiResCAM for
               Seg-HiRes-Grad CAM, ``SemanticSegmentationTarget``): what users write today. It imports
               here with a torchvision stub (``bench_nnunet_peer.write_stub``); none of the stubbed names is
               called.

Cases: the shipped model's architecture (widths 16-128) at 256^2 and 512^2 with a kidney-sized M, and
with a one-pixel M on one slice (the click-to-explain path); ``--paper``: the paper's width (64-1024,
depth 5) at 512^2. The weights are random (speed does not depend on them). Prints the machine's load
(``os.getloadavg``) before and after, and torch's thread count.

    python benchmarks/bench_engine.py [--rounds 3] [--cases small-256,...] [--paper] [--raw] [--device cpu]
        [--order shuffle|rotate]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seghirescam import UNet2D, explain_volume
from seghirescam.cam.capture import ActivationCapture, evaluation_mode
from seghirescam.cam.engine import DEFAULT_METHODS
from seghirescam.cam.runtime import channels_last_model, resolve_device

GRADCAM_CLASSES = {"seg-grad-cam": "GradCAM", "seg-hires-grad-cam": "HiResCAM"}
TARGET = 1


@dataclass(frozen=True)
class Case:
    """One benchmarked shape: the U-Net's widths, the volume (slices, size, size) and M."""

    name: str
    widths: tuple[int, ...]
    slices: int
    size: int
    m: str  # "region": a kidney-sized block on every slice; "pixel": one pixel on one slice


CASES = {
    "small-256": Case("widths 16-128, 8 x 256^2, M region", (16, 32, 64, 128), 8, 256, "region"),
    "small-512": Case("widths 16-128, 4 x 512^2, M region", (16, 32, 64, 128), 4, 512, "region"),
    "small-pixel": Case("widths 16-128, 8 x 512^2, M one pixel", (16, 32, 64, 128), 8, 512, "pixel"),
    "paper-512": Case("widths 64-1024, 1 x 512^2, M region", (64, 128, 256, 512, 1024), 1, 512, "region"),
    "paper-pixel": Case("widths 64-1024, 4 x 512^2, M one pixel", (64, 128, 256, 512, 1024), 4, 512, "pixel"),
}


def make_case(case: Case) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """A random U-Net in eval mode, a (slices, size, size) float32 volume and its bool M."""
    torch.manual_seed(0)
    model = UNet2D(1, 4, list(case.widths)).eval()
    volume = np.random.default_rng(0).normal(size=(case.slices, case.size, case.size)).astype(np.float32)
    mask = np.zeros(volume.shape, bool)
    if case.m == "region":
        mask[:, case.size // 3: case.size // 2, case.size // 4: case.size // 2] = True
    else:
        mask[case.slices // 2, case.size // 2, case.size // 3] = True
    return model, volume, mask


def floor(model: torch.nn.Module, volume: np.ndarray, mask: np.ndarray, layer: str, batch_size: int,
          channels_last: bool, device: torch.device = torch.device("cpu"), autocast: str | None = None) -> None:
    """Forward of the slices holding M in batches, and the backward from y_M to the layer (no parameter grads).

    The slices go to ``device`` batch by batch, as in the engine; ``autocast`` "bf16" runs the forward in bfloat16.
    """
    todo = np.flatnonzero(mask.any(axis=(1, 2)))
    for start in range(0, len(todo), batch_size):
        index = todo[start:start + batch_size]
        x = torch.from_numpy(volume[index][:, None]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ActivationCapture(model, (layer,)) as capture:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast == "bf16"):
                logits = model(x)
        with torch.enable_grad():
            torch.autograd.grad((logits[:, TARGET].float() * torch.from_numpy(mask[index]).to(device)).sum(),
                                [capture.activations[layer]])
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gradcam_loop(model: torch.nn.Module, volume: np.ndarray, mask: np.ndarray, layer: str,
                 device: torch.device = torch.device("cpu")) -> None:
    """pytorch-grad-cam as users call it: per slice holding M and per method, forward and full backward."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    module = dict(model.named_modules())[layer]
    for name in DEFAULT_METHODS:
        with getattr(pytorch_grad_cam, GRADCAM_CLASSES[name])(model=model, target_layers=[module]) as cam:
            for s in np.flatnonzero(mask.any(axis=(1, 2))):
                cam(input_tensor=torch.from_numpy(volume[s:s + 1, None]).to(device),
                    targets=[SemanticSegmentationTarget(TARGET, mask[s].astype(np.float32))])
    model.zero_grad(set_to_none=True)


def round_orders(names: list[str], rounds: int, order: str) -> list[list[str]]:
    """The variants' order in each round: "shuffle" successive permutations of a generator seeded 0, "rotate"
    the names shifted by the round's index."""
    if order == "shuffle":
        rng = np.random.default_rng(0)
        return [[names[i] for i in rng.permutation(len(names))] for _ in range(rounds)]
    return [names[r % len(names):] + names[:r % len(names)] for r in range(rounds)]


def run_case(case: Case, rounds: int, layer: str, device: torch.device, gradcam: bool,
             order: str = "shuffle") -> dict[str, list[float]]:
    """Seconds of every variant in every round (order per ``round_orders``), after one warm-up of each."""
    model, volume, mask = make_case(case)
    batch = explain_volume(model, volume, mask, TARGET, layers=(layer,), device=device).batch_size
    fast = channels_last_model(model)
    variants: dict[str, Callable[[], object]] = {
        "engine": lambda: explain_volume(model, volume, mask, TARGET, layers=(layer,), device=device),
        "engine NCHW": lambda: explain_volume(model, volume, mask, TARGET, layers=(layer,), device=device,
                                              channels_last=False),
        "floor": lambda: floor(model, volume, mask, layer, batch, False),
        "floor CL": lambda: floor(fast, volume, mask, layer, batch, True),
    }
    if gradcam:
        variants["grad-cam"] = lambda: gradcam_loop(model, volume, mask, layer)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    with evaluation_mode(model), evaluation_mode(fast):
        for name in names:  # warm-up (oneDNN kernels, the channels-last copy)
            variants[name]()
        for round_names in round_orders(names, rounds, order):
            for name in round_names:
                started = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - started)
    times["batch"] = [float(batch)]
    times["slices"] = [float(mask.any(axis=(1, 2)).sum())]
    return times


RATIOS = (("engine / floor", "engine", "floor"), ("engine / floor CL", "engine", "floor CL"),
          ("engine NCHW / floor", "engine NCHW", "floor"), ("engine NCHW / engine", "engine NCHW", "engine"),
          ("grad-cam / engine", "grad-cam", "engine"))


def per_round(times: dict[str, list[float]], top: str, bottom: str) -> str:
    """'median [min-max]' of the per-round ratios top/bottom."""
    if top not in times or bottom not in times:
        return "-"
    ratios = [a / b for a, b in zip(times[top], times[bottom])]
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"


def install_gradcam() -> bool:
    """Make pytorch-grad-cam importable (torchvision stub first on sys.path); False if it is not installed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_nnunet_peer import write_stub

    sys.path.insert(0, str(write_stub(Path(tempfile.mkdtemp(prefix="bench-engine-")))))
    try:
        importlib.import_module("pytorch_grad_cam")
    except ImportError as error:
        print(f"pytorch-grad-cam not importable ({error}): its column is left out")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="small-256,small-512,small-pixel",
                        help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--paper", action="store_true", help="add the paper-width cases (paper-512, paper-pixel)")
    parser.add_argument("--layer", default="bottleneck")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-gradcam", action="store_true", help="leave pytorch-grad-cam out")
    parser.add_argument("--raw", action="store_true", help="also print every variant's seconds per round")
    parser.add_argument("--order", default="shuffle", choices=("shuffle", "rotate"),
                        help="variants per round: a seeded random order (default) or the fixed order rotated")
    args = parser.parse_args()
    names = list(dict.fromkeys(args.cases.split(",") + (["paper-512", "paper-pixel"] if args.paper else [])))
    device = resolve_device(args.device)
    gradcam = not args.no_gradcam and install_gradcam()
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, device {device}; layer {args.layer}; methods "
          f"{', '.join(DEFAULT_METHODS)}; {args.rounds} rounds, order {args.order}; load average before "
          f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    print("| case | batch | slices with M | engine s | floor s | " + " | ".join(r[0] for r in RATIOS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(RATIOS))
    for name in names:
        times = run_case(CASES[name], args.rounds, args.layer, device, gradcam, args.order)
        print(f"| {CASES[name].name} | {int(times['batch'][0])} | {int(times['slices'][0])} | "
              f"{statistics.median(times['engine']):.3f} | {statistics.median(times['floor']):.3f} | "
              + " | ".join(per_round(times, top, bottom) for _, top, bottom in RATIOS) + " |", flush=True)
        if args.raw:
            print("    seconds per round: " + "; ".join(f"{variant} {', '.join(f'{t:.3f}' for t in values)}"
                                                      for variant, values in times.items()
                                                      if variant not in ("batch", "slices")), flush=True)
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
    main()
