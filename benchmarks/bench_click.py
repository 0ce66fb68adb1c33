"""Benchmark: click-to-explain latency against a plain ``explain_slices`` call for the same M.

The shipped default model on one phantom slice through a kidney (default 512 x 512), the default
layer and methods. Per repeat, interleaved in one run:
  (a) first click: a new ``SliceExplainer`` and one ``explain_pixel`` (the forward pass with the graph
      kept, then one backward);
  (b) further clicks on the same slice: ``explain_pixel`` at other pixels (one backward each);
  (c) baseline: ``explain_slices`` for the same M (one forward and one backward, what each click
      would cost without the cache).
Prints the median of each (target: < 1 s per click on the CPU) and the ratios a/c and b/c.

    python benchmarks/bench_click.py [--size 512] [--repeats 5] [--clicks 3] [--device cpu] [--radius 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import psutil
import torch

from seghirescam.cam.engine import DEFAULT_METHODS, explain_slices
from seghirescam.cam.interactive import SliceExplainer
from seghirescam.cam.runtime import resolve_device
from seghirescam.models.loading import load_default_model
from seghirescam.synthetic.phantom import make_phantom

KIDNEY = 1


def _slice(size: int) -> np.ndarray:
    """One (size, size) phantom slice in HU through the kidneys."""
    phantom = make_phantom(seed=0, shape=(8, size, size), spacing=(350.0 / size, 350.0 / size, 5.0))
    index = int(np.argmax((phantom.labels == KIDNEY).sum(axis=(1, 2))))
    return phantom.ct[index].astype(np.float32)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=3, help="further clicks per repeat")
    parser.add_argument("--radius", type=int, default=2, help="disc radius of each click (pixels)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    loaded = load_default_model()
    model = loaded.model.to(device)
    image = loaded.card.preprocess(torch.from_numpy(_slice(args.size))[None])[0].to(device)  # (C, H, W)
    layers = (loaded.default_layer,)
    rng = np.random.default_rng(0)
    first, further, baseline, memory = [], [], [], []
    settings = {"layers": layers, "methods": DEFAULT_METHODS, "pad_to_multiple": loaded.card.size_multiple}
    explain_slices(model, image[None], torch.ones(1, args.size, args.size, dtype=torch.bool, device=device), KIDNEY,
                   **settings)  # warm-up
    process = psutil.Process()
    for _ in range(args.repeats):
        pixels = rng.integers(args.size // 4, 3 * args.size // 4, size=(args.clicks + 1, 2))
        _synchronise(device)
        started = time.perf_counter()
        rss = process.memory_info().rss
        explainer = SliceExplainer(model, image, KIDNEY, **settings)
        result = explainer.explain_pixel(int(pixels[0, 0]), int(pixels[0, 1]), radius=args.radius)
        _synchronise(device)
        first.append(time.perf_counter() - started)
        memory.append(process.memory_info().rss - rss)
        for i, j in pixels[1:]:
            started = time.perf_counter()
            result = explainer.explain_pixel(int(i), int(j), radius=args.radius)
            _synchronise(device)
            further.append(time.perf_counter() - started)
        mask = torch.from_numpy(result.mask)[None].to(device)
        started = time.perf_counter()
        maps = explain_slices(model, image[None], mask, KIDNEY, **settings)
        _synchronise(device)
        baseline.append(time.perf_counter() - started)
        key = (DEFAULT_METHODS[0], layers[0])
        reference = maps[key][0].cpu().numpy()
        assert np.allclose(result[key] * result.scales[key], reference, rtol=1e-5, atol=1e-5 * max(reference.max(), 1e-12))
        del explainer
    a, b, c = (statistics.median(values) for values in (first, further, baseline))
    print(f"click to explain: default model ({loaded.card.name}), {args.size} x {args.size}, device {device}, "
          f"{torch.get_num_threads()} threads, layer {layers[0]}, methods {', '.join(DEFAULT_METHODS)}, "
          f"disc radius {args.radius}")
    print(f"  (a) first click (forward + backward): median {a * 1000:7.1f} ms over {len(first)}")
    print(f"  (b) further clicks (backward only):  median {b * 1000:7.1f} ms over {len(further)}")
    print(f"  (c) explain_slices, same M:          median {c * 1000:7.1f} ms over {len(baseline)}")
    print(f"  ratios: a/c = {a / c:.2f}, b/c = {b / c:.2f} (target: a and b < 1000 ms on the CPU)")
    if device.type == "cpu":
        print(f"  kept graph and activations: about {statistics.median(memory) / 2**20:.0f} MiB of process RSS")


if __name__ == "__main__":
    main()
