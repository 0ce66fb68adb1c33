"""Benchmark: the engine against the naive loop users write today, and against the floor.

Three ways, timed in one run on the same synthetic volume and model:
  (a) naive: one slice at a time, a full backward with parameter gradients, one pass per method;
  (b) engine: ``explain_volume`` with both methods at once;
  (c) floor: batched forward plus the backward down to the layer, with no CAM maths.
Prints slices/s, the ratios a/b (target >= 5) and b/c (target <= 1.25), and peak memory.

    python benchmarks/bench_engine.py [--slices 48] [--size 256] [--width 16] [--depth 4]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from seghirescam import UNet2D, explain_volume
from seghirescam.cam.capture import ActivationCapture, evaluation_mode
from seghirescam.cam.engine import DEFAULT_METHODS
from seghirescam.cam.methods import resolve_method
from seghirescam.cam.runtime import resolve_device


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled process RSS above the start."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            process = psutil.Process()
            self._start = process.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, process.memory_info().rss - self._start)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()


def naive(model, volume, mask, target, layer, methods, device):
    """What a user writes first: per slice and per method, full forward and backward."""
    module = dict(model.named_modules())[layer]
    out = {m: np.zeros(volume.shape, np.float32) for m in methods}
    for s in range(volume.shape[0]):
        if not mask[s].any():
            continue
        for name in methods:
            store = {}
            handle = module.register_forward_hook(lambda _m, _i, o: store.update(a=o))
            x = torch.from_numpy(volume[s:s + 1, None]).to(device)
            logits = model(x)
            handle.remove()
            store["a"].retain_grad()
            model.zero_grad()
            (logits[0, target] * torch.from_numpy(mask[s]).to(device)).sum().backward()
            a, g = store["a"].detach(), store["a"].grad
            cam = resolve_method(name).combine(a, g).clamp_min(0)
            out[name][s] = F.interpolate(cam[None], size=volume.shape[1:], mode="bilinear")[0, 0].cpu().numpy()
    model.zero_grad(set_to_none=True)
    return out


def floor(model, volume, mask, target, layer, batch_size, device):
    """The least any method needs: forward, and the backward from y_M down to the layer."""
    todo = np.flatnonzero(mask.any(axis=(1, 2)))
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        x = torch.from_numpy(volume[idx][:, None]).to(device)
        m = torch.from_numpy(mask[idx]).to(device)
        with ActivationCapture(model, (layer,)) as capture:
            with torch.no_grad():
                logits = model(x)
        with torch.enable_grad():
            torch.autograd.grad((logits[:, target] * m).sum(), [capture.activations[layer]])
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    """Best wall time of ``repeats`` runs, and the peak memory of the first."""
    best, peak = float("inf"), 0
    for run in range(repeats):
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        peak = memory.peak if run == 0 else peak
    return best, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=int, default=16, help="channels of enc1 (the paper: 64)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--layer", default="bottleneck")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = UNet2D(1, 4, [args.width * 2**i for i in range(args.depth)]).to(device).eval()
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(args.slices, args.size, args.size)).astype(np.float32)
    mask = np.zeros(volume.shape, bool)
    mask[:, args.size // 3: args.size // 2, args.size // 4: args.size // 2] = True
    methods = DEFAULT_METHODS

    def engine():
        return explain_volume(model, volume, mask, 1, layers=(args.layer,), methods=methods, device=device)

    batch_size = engine().batch_size  # warm-up, and the batch size "auto" picks
    with evaluation_mode(model):
        t_a, m_a = timed(lambda: naive(model, volume, mask, 1, args.layer, methods, device), device, args.repeats)
        t_b, m_b = timed(engine, device, args.repeats)
        t_c, m_c = timed(lambda: floor(model, volume, mask, 1, args.layer, batch_size, device), device, args.repeats)

    n = args.slices
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; volume {n} x {args.size} x {args.size}; "
          f"U-Net widths {list(model.widths)}; layer {args.layer}; methods {', '.join(methods)}; batch {batch_size}")
    print(f"{'':28s}{'slices/s':>10s}{'seconds':>10s}{'peak MB':>10s}")
    for label, t, mem in (("(a) naive loop", t_a, m_a), ("(b) engine", t_b, m_b), ("(c) floor", t_c, m_c)):
        print(f"{label:28s}{n / t:10.2f}{t:10.2f}{mem / 2**20:10.0f}")
    print(f"a/b = {t_a / t_b:.2f}x faster (target >= 5)")
    print(f"b/c = {t_b / t_c:.2f} (target <= 1.25)")


if __name__ == "__main__":
    main()
