"""Deviation of the fast paths from the exact maps on the shared real CT, per method and layer.

The shipped model explains the left kidney (TotalSegmentator label 3, class "kidney") on every slice
that holds it, with the gradient methods Seg-Grad, Seg-HiRes-Grad and Seg-XRes CAM (``--methods``), at the bottleneck and ``dec2`` (``--layers``). Against the
NCHW float32 maps (``channels_last=False``) it prints, per method and layer, the largest deviation as a
fraction of the map's maximum, ``max |fast - exact| / max exact``, and the mean one (``mean |fast -
exact| / max exact``), for

  channels-last  the CPU default (``channels_last=None``), float32;
  bf16           ``autocast="bf16"`` (the ``--precision bf16`` preview).

On a CPU without bfloat16 in hardware the engine refuses bf16; ``--emulate-bf16`` lets PyTorch emulate
it here (slower than float32, so no timing is taken; the rounding to bfloat16 is the same, but the
kernels differ from oneDNN's AVX512-BF16/AMX or CUDA's, which may accumulate differently).

    python benchmarks/bench_precision.py [--layers bottleneck,dec2] [--methods ...] [--emulate-bf16]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import seghirescam as shc
from seghirescam.cam import runtime
from seghirescam.imaging.sample_data import real_ct_dir
from seghirescam.imaging.volumes import SliceOrientation


def deviation(fast: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(max, mean) of |fast - exact| as fractions of the exact map's maximum."""
    top = float(exact.max())
    difference = np.abs(fast.astype(np.float64) - exact)
    return float(difference.max()) / top, float(difference.mean()) / top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="bottleneck,dec2")
    parser.add_argument("--methods", default="seg-grad-cam,seg-hires-grad-cam,seg-xres-cam")
    parser.add_argument("--label", type=int, default=3, help="TotalSegmentator label of M (3: left kidney)")
    parser.add_argument("--emulate-bf16", action="store_true",
                        help="let PyTorch emulate bfloat16 on a CPU without it (deviation only, no timing)")
    args = parser.parse_args()
    folder = real_ct_dir()
    loaded = shc.load_default_model()
    ct = shc.read_volume(folder / "example_ct.nii.gz")
    labels = shc.read_volume(folder / "example_seg_fast_force_split.nii.gz")  # on the CT grid
    orientation = SliceOrientation.from_geometry(ct.geometry)
    volume, mask = orientation.to_slices(ct.array), orientation.to_slices(labels.array == args.label)
    target = loaded.card.class_for_segment("kidney")
    layers, methods = tuple(args.layers.split(",")), tuple(args.methods.split(","))
    bf16 = runtime.cpu_supports_bf16()
    if not bf16 and args.emulate_bf16:
        runtime.cpu_supports_bf16 = lambda: True
    options = dict(layers=layers, methods=methods, device="cpu", normalize="none", preprocess=loaded.card.preprocess,
                   pad_to_multiple=loaded.card.size_multiple)
    exact = shc.explain_volume(loaded.model, volume, mask, target, channels_last=False, **options)
    runs = {"channels-last": shc.explain_volume(loaded.model, volume, mask, target, **options)}
    if bf16 or args.emulate_bf16:
        runs["bf16"] = shc.explain_volume(loaded.model, volume, mask, target, autocast="bf16", **options)
    print(f"real CT {ct.array.shape} (k, j, i), M = label {args.label} on {len(exact.slices_explained)} slices, "
          f"class {target}; torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 in hardware: {bf16}{'' if bf16 or not args.emulate_bf16 else ' (bf16 emulated)'}")
    print("| method | layer | " + " | ".join(f"{name} max / mean (of max)" for name in runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for method in methods:
        for layer in layers:
            key = (method, layer)
            cells = [deviation(run[key], exact[key]) for run in runs.values()]
            print(f"| {shc.METHODS[method].display_name} | {layer} | "
                  + " | ".join(f"{big:.1e} / {mean:.1e}" for big, mean in cells) + " |")


if __name__ == "__main__":
    main()
