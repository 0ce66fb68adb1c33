"""Benchmark: SegHiResCAM against the peer package nnunetv2-cam (0.1.6.1) on a tiny nnU-Net v2 model.

Both explain the same tiny but real nnU-Net results folder (``Testing/nnunet_folders.py``, built under
``--work`` if missing) on the same small case (``Testing/nnunet_folders.make_test_case()``, written as
``case_0000.nii.gz`` because the peer reads files), at the same layer (the deepest encoder stage) and
class (1, "kidney"), with HiResCAM / Seg-HiRes-Grad CAM and Grad-CAM / Seg-Grad CAM, on the CPU,
without test-time mirroring, tile step 0.5, folds ("all",).

What each explains (read from the sources):
- nnunetv2-cam (``cam_core.compute_cam_with_sliding_window``): for every sliding-window patch p
  (all patches), a no-grad forward gives the patch's own segmentation S_p = argmax softmax; its
  ``SemanticSegmentationTarget`` returns ``(model_output * mask).sum()`` with model_output the
  (K, *patch) logits and mask = (S_p == c) of shape (1, *patch): the target is
  y_p = sum_{v in patch, S_p(v) = c} sum_{k=0}^{K-1} logit_{p,k}(v) -- the category is stored but not
  used, so the logits of *all* classes are summed over the patch's class-c region. pytorch-grad-cam
  then makes the patch CAM (ReLU, min-max scaled to [0, 1] per patch, resized to the patch by
  scipy.ndimage.zoom (3D, cubic spline) or cv2.resize (2D), min-max scaled again); the patch maps are
  averaged with uniform weights in float16 and multiplied by 1.3 (3D) or by the largest overlap
  count (2D), then resampled to the CT grid with nnU-Net's ``resampling_fn_probabilities``.
- SegHiResCAM (``NnUNetModel.explain_ct``): one number, y_M = sum_{v in M} of the stitched (Gaussian-
  weighted, as nnU-Net predicts) class-c logit, here with M = the model's predicted class-c mask on
  the CT grid (``predict_ct(ct) == c``, mapped into nnU-Net's frame by nearest neighbour). Each tile
  holding M gets one forward and one backward of its share of y_M; layer maps are upsampled
  (trilinear / bilinear) and summed, ReLU at the end, no per-tile normalization; then resampled to
  the CT grid with nnU-Net's ``resampling_fn_probabilities``.
So the two do not explain the same number; M is chosen as close as the peer's target allows.

pytorch-grad-cam (a dependency of the peer) imports torchvision, whose PyPI build fails beside this
CPU torch ("operator torchvision::nms does not exist"). The peer therefore runs with a stub
``torchvision`` package placed first on its sys.path (``torchvision.transforms``,
``torchvision.transforms.functional``, ``torchvision.ops``: names that raise if called; none is used
on this path).

Two worker processes stay up (ours in this interpreter's venv, the peer in ``--peer-python``'s venv)
and the parent alternates runs between them, swapping the order every round, after one warm-up run
each. Modes:
  full  ours: read the .nii.gz + ``explain_ct`` (one method) on the CT grid;
        peer: ``run_cam_for_prediction(save_slices=False)`` (reads the file; nnU-Net's preprocessing
        iterator spawns a process per call) on the CT grid;
  core  ours: ``cam.tiles.explain_tiles`` on nnU-Net-preprocessed data;
        peer: ``cam_core.compute_cam_with_sliding_window`` on the same preprocessed data.
Agreement (full mode, CT grid): each map divided by its max, Pearson r over all voxels and the max
absolute difference; as a diagnostic (untimed) also against the peer run with its target indexed by
the class (``logits[c] * mask``), to show how much of the disagreement the all-class sum causes.

    python benchmarks/bench_nnunet_peer.py [--peer-python /work/scratch/peer/venv/bin/python]
        [--configs 3d_fullres,2d] [--rounds 5] [--modes full,core] [--work DIR] [--out FILE.jsonl]

Prints the setup, one JSON line per (configuration, mode, method) (also appended to ``--out``) and a
table: median seconds of ours and of the peer, the ratio peer / ours, tiles run, Pearson r and max
|diff| of the normalized maps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASS = 1
METHODS = {"hirescam": "seg-hires-grad-cam", "gradcam": "seg-grad-cam"}  # peer name -> our name

STUB = {
    "torchvision/__init__.py": '"""Stub: the real torchvision does not load beside this CPU torch."""\n'
                               "from . import ops, transforms  # noqa: F401\n__version__ = '0.0.0+stub'\n",
    "torchvision/ops/__init__.py": "def box_iou(*args, **kwargs):\n"
                                   "    raise NotImplementedError('torchvision stub')\n",
    "torchvision/transforms/__init__.py": "class _Stub:\n    def __init__(self, *a, **k):\n"
                                          "        raise NotImplementedError('torchvision stub')\n"
                                          "Compose = Normalize = ToTensor = _Stub\n",
    "torchvision/transforms/functional.py": "def resize(*args, **kwargs):\n"
                                            "    raise NotImplementedError('torchvision stub')\n",
}


# ------------------------------------------------------------------------------------------ setup
def ensure_folders(work: Path) -> dict[str, Path]:
    """The tiny results folders below ``work/tiny`` (``Testing/nnunet_folders.ensure_tiny_results``)."""
    sys.path.insert(0, str(ROOT / "Testing"))
    import nnunet_folders

    return nnunet_folders.ensure_tiny_results(work / "tiny")


def write_case(work: Path) -> Path:
    """``make_test_case()`` as work/case/case_0000.nii.gz (the peer reads files)."""
    import SimpleITK as sitk

    sys.path.insert(0, str(ROOT / "Testing"))
    import nnunet_folders

    path = work / "case" / "case_0000.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    image, _ = nnunet_folders.make_test_case()
    sitk.WriteImage(image, str(path))
    return path


def write_stub(work: Path) -> Path:
    root = work / "torchvision_stub"
    for name, text in STUB.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def nnunet_env(work: Path) -> dict:
    env = dict(os.environ)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.setdefault(key, str(work / "tiny" / key))
    env.setdefault("nnUNet_compile", "f")
    return env


# ------------------------------------------------------------------------------------------ workers
class OursWorker:
    """SegHiResCAM in this venv."""

    def __init__(self, config: dict) -> None:
        import SimpleITK as sitk
        import torch

        from seghirescam.imaging.volumes import Volume
        from seghirescam.models.nnunet import load_nnunet_model
        from seghirescam.models.nnunet.frames import mask_to_network_frame, preprocess
        from seghirescam.models.nnunet.sliding_window import gaussian_weights, pad_to_patch, sliding_window_slicers

        self.config, self.sitk, self.Volume = config, sitk, Volume
        self.model = load_nnunet_model(config["folder"])
        self.layer = self.model.default_layer
        ct = Volume.from_sitk(sitk.ReadImage(config["case"]))
        self.mask = self.model.predict_ct(ct) == CLASS  # M: the predicted class mask on the CT grid
        loaded = self.model.loaded
        prepared = preprocess(loaded, self.model._image(ct))
        mask_net = mask_to_network_frame(loaded, prepared, self.mask)
        data, _ = pad_to_patch(loaded, torch.from_numpy(prepared.data))
        mask_padded, _ = pad_to_patch(loaded, torch.from_numpy(mask_net[None].astype(np.float32)))
        self.core_args = (data, mask_padded[0] > 0, sliding_window_slicers(loaded, data.shape[1:], 0.5),
                          gaussian_weights(loaded))
        self.info = {"layer": self.layer, "m_voxels_ct_grid": int(self.mask.sum()), "ct_shape": list(ct.array.shape),
                     "network_frame": list(prepared.data.shape), "torch": torch.__version__,
                     "threads": torch.get_num_threads()}

    def run(self, method: str, mode: str, save: str | None) -> dict:
        from seghirescam.cam.methods import resolve_methods
        from seghirescam.cam.tiles import explain_tiles

        ours = METHODS[method]
        started = time.perf_counter()
        if mode == "full":
            ct = self.Volume.from_sitk(self.sitk.ReadImage(self.config["case"]))
            result = self.model.explain_ct(ct, self.mask, CLASS, layers=[self.layer], methods=(ours,), device="cpu",
                                           normalize="none")
            seconds = time.perf_counter() - started
            if save:
                np.save(save, np.asarray(result.maps[(ours, self.layer)], np.float32))
            return {"seconds": seconds, "tiles_run": result.extra["tiles_run"],
                    "tiles_total": result.extra["tiles_total"], "y_m": result.extra["y_m"]}
        data, mask, tiles, importance = self.core_args
        out = explain_tiles(self.model.network, data, mask, tiles, importance, CLASS, [self.layer],
                            resolve_methods((ours,)))
        return {"seconds": time.perf_counter() - started, "tiles_run": out.tiles_run, "tiles_total": out.tiles_total}


class PeerWorker:
    """nnunetv2-cam in its own venv (torchvision stub first on sys.path)."""

    def __init__(self, config: dict) -> None:
        import torch
        import nnunetv2.inference.predict_from_raw_data as pfr
        import torchvision

        assert "stub" in torchvision.__version__, "the torchvision stub is not first on sys.path"
        import nnunetv2_cam
        from nnunetv2_cam import api, cam_core

        self.config, self.api, self.cam_core = config, api, cam_core
        self.patched_trainer_lookup = False
        kwargs = dict(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                      device=torch.device("cpu"), verbose=False, allow_tqdm=False)
        self.predictor = pfr.nnUNetPredictor(**kwargs)
        try:
            self.predictor.initialize_from_trained_model_folder(config["folder"], use_folds=("all",))
        except Exception:  # the trainer lookup imports every trainer module (timm -> torchvision)
            from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

            pfr.recursive_find_trainer_class_by_name = lambda name: nnUNetTrainer
            self.patched_trainer_lookup = True
            self.predictor = pfr.nnUNetPredictor(**kwargs)
            self.predictor.initialize_from_trained_model_folder(config["folder"], use_folds=("all",))
        self.cam_type = "2d" if len(self.predictor.configuration_manager.patch_size) == 2 else "3d"
        self.out = Path(config["work"]) / f"peer_out_{config['configuration']}"
        data, _, properties, _ = api._preprocess_file(self.predictor, config["case"], str(self.out / "case"))
        self.data = data
        from importlib.metadata import version

        self.original_target_call = cam_core.SemanticSegmentationTarget.__call__
        self.info = {"nnunetv2_cam": version("nnunetv2-cam"), "grad_cam": version("grad-cam"),
                     "nnunetv2_cam.__version__": getattr(nnunetv2_cam, "__version__", "?"), "cam_type": self.cam_type,
                     "patched_trainer_lookup": self.patched_trainer_lookup, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "network_frame": list(data.shape)}

    def _slicers(self) -> int:
        import acvl_utils.cropping_and_padding.padding as padding

        padded, _ = padding.pad_nd_image(self.data, self.predictor.configuration_manager.patch_size, "constant",
                                         {"value": 0}, True, None)
        size = padded.shape[1:] if self.cam_type == "2d" else self.data.shape[1:]
        return len(self.cam_core._get_sliding_window_slicers(size, self.predictor.configuration_manager.patch_size,
                                                             0.5))

    def run(self, method: str, mode: str, save: str | None, class_target: bool = False) -> dict:
        """One run; ``class_target``: the peer with its target indexed by the class (diagnostic only)."""
        import torch

        target = self.cam_core.SemanticSegmentationTarget
        target.__call__ = ((lambda t, out: (out[t.category] * t.mask[0]).sum() * t.scale_factor) if class_target
                           else self.original_target_call)
        p, layer = self.predictor, self.config["layer"]
        started = time.perf_counter()
        if mode == "full":
            maps = self.api.run_cam_for_prediction(p, self.config["case"], str(self.out), layer, CLASS, method,
                                                   cam_type=self.cam_type, device=torch.device("cpu"),
                                                   save_slices=False, verbose=False)
            seconds = time.perf_counter() - started
            if save:
                np.save(save, np.asarray(maps[0], np.float32)[0])
        else:
            self.cam_core.compute_cam_with_sliding_window(
                p.network, self.data, layer, CLASS, method, torch.device("cpu"), p.configuration_manager,
                p.label_manager, p.list_of_parameters, p.tile_step_size, p.use_mirroring, p.allowed_mirroring_axes,
                cam_type=self.cam_type)
            seconds = time.perf_counter() - started
        tiles = self._slicers()
        return {"seconds": seconds, "tiles_run": tiles, "tiles_total": tiles}


def worker_main(kind: str, config: dict) -> None:
    """Serve JSON commands on stdin; replies go to the original stdout, everything else to stderr."""
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the peer prints banners (and tqdm) to stdout
    sys.stdout = sys.stderr
    try:
        worker = OursWorker(config) if kind == "ours" else PeerWorker(config)
        reply.write(json.dumps({"ready": True, **worker.info}) + "\n")
    except Exception as error:  # report why the worker cannot run, then stop
        import traceback

        traceback.print_exc()
        reply.write(json.dumps({"ready": False, "error": f"{type(error).__name__}: {error}"}) + "\n")
        reply.flush()
        return
    reply.flush()
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("op") == "stop":
            break
        extra = {"class_target": True} if command.get("class_target") else {}
        reply.write(json.dumps(worker.run(command["method"], command["mode"], command.get("save"), **extra)) + "\n")
        reply.flush()


class Worker:
    """A worker process and its line protocol."""

    def __init__(self, kind: str, python: str, config: dict, env: dict, log: Path) -> None:
        self.kind, self.log = kind, open(log, "w")
        self.proc = subprocess.Popen([python, __file__, "--worker", kind, json.dumps(config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.info = json.loads(self.proc.stdout.readline() or '{"ready": false, "error": "no reply"}')

    def run(self, method: str, mode: str, save: str | None = None, class_target: bool = False) -> dict:
        command = {"op": "run", "method": method, "mode": mode, "save": save, "class_target": class_target}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker died; see {self.log.name}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "stop"}\n')
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=60)
        self.log.close()


# ------------------------------------------------------------------------------------------ parent
def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    if a.shape != b.shape:
        return {"error": f"shapes differ: {a.shape} vs {b.shape}"}
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    bad = {"ours_nonfinite": int((~np.isfinite(a)).sum()), "peer_nonfinite": int((~np.isfinite(b)).sum())}
    a, b = np.nan_to_num(a), np.nan_to_num(b)
    if a.max() <= 0 or b.max() <= 0:
        return {**bad, "error": f"a map is zero: ours max {a.max()}, peer max {b.max()}"}
    a, b = a / a.max(), b / b.max()
    return {**bad, "pearson_r": float(np.corrcoef(a, b)[0, 1]), "max_abs_diff": float(np.abs(a - b).max()),
            "mean_abs_diff": float(np.abs(a - b).mean())}


def compare(configuration: str, folder: Path, args: argparse.Namespace, case: Path, stub: Path) -> list[dict]:
    work = args.work
    config = {"configuration": configuration, "folder": str(folder), "case": str(case), "work": str(work)}
    ours = Worker("ours", sys.executable, config, nnunet_env(work), work / f"ours_{configuration}.log")
    if not ours.info.get("ready"):
        raise RuntimeError(f"our worker failed: {ours.info}")
    peer_env = nnunet_env(work)
    peer_env["PYTHONPATH"] = os.pathsep.join([str(stub)] + [p for p in [peer_env.get("PYTHONPATH")] if p])
    peer = Worker("peer", args.peer_python, {**config, "layer": ours.info["layer"]}, peer_env,
                  work / f"peer_{configuration}.log")
    print(f"[{configuration}] ours: {json.dumps(ours.info)}", flush=True)
    print(f"[{configuration}] peer: {json.dumps(peer.info)}", flush=True)
    rows = []
    try:
        if not peer.info.get("ready"):
            print(f"[{configuration}] the peer cannot run: {peer.info.get('error')} (log {work / f'peer_{configuration}.log'})")
            return [{"configuration": configuration, "peer_error": peer.info.get("error")}]
        for mode in args.modes.split(","):
            for method in args.methods.split(","):
                saves = {k: str(work / f"map_{configuration}_{method}_{k}.npy") for k in ("ours", "peer")}
                first = {"ours": ours.run(method, mode, saves["ours"] if mode == "full" else None),  # warm-up
                         "peer": peer.run(method, mode, saves["peer"] if mode == "full" else None)}
                times = {"ours": [], "peer": []}
                for round_index in range(args.rounds):
                    order = (ours, peer) if round_index % 2 == 0 else (peer, ours)
                    for worker in order:
                        times[worker.kind].append(worker.run(method, mode)["seconds"])
                med = {k: statistics.median(v) for k, v in times.items()}
                row = {"configuration": configuration, "mode": mode, "method": method, "our_method": METHODS[method],
                       "layer": ours.info["layer"], "class": CLASS, "rounds": args.rounds,
                       "ours_median_s": round(med["ours"], 4), "peer_median_s": round(med["peer"], 4),
                       "ratio_peer_over_ours": round(med["peer"] / med["ours"], 2),
                       "ours_s": [round(t, 4) for t in times["ours"]], "peer_s": [round(t, 4) for t in times["peer"]],
                       "ours_tiles_run": first["ours"]["tiles_run"], "tiles_total": first["ours"]["tiles_total"],
                       "peer_tiles_run": first["peer"]["tiles_run"]}
                if mode == "full":
                    row.update(agreement(np.load(saves["ours"]), np.load(saves["peer"])))
                    row["ours_y_m"] = first["ours"].get("y_m")
                    # diagnostic, untimed: the peer with its target indexed by the class
                    fixed = str(work / f"map_{configuration}_{method}_peer_class_target.npy")
                    peer.run(method, mode, fixed, class_target=True)
                    row["class_target_peer"] = agreement(np.load(saves["ours"]), np.load(fixed))
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                rows.append(row)
    finally:
        ours.stop()
        peer.stop()
    return rows


def print_table(rows: list[dict]) -> None:
    """The summary table; r* / max|d|* compare ours with the peer whose target is indexed by the class."""
    def number(row: dict, key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "-"

    print()
    head = (f"{'config':<11} {'mode':<5} {'method':<9} {'ours s':>8} {'peer s':>8} {'peer/ours':>9} "
            f"{'tiles ours/peer/total':>22} {'r':>7} {'max|d|':>7} {'r*':>7} {'max|d|*':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "peer_error" in r:
            print(f"{r['configuration']:<11} peer could not run: {r['peer_error']}")
            continue
        fixed = r.get("class_target_peer", {})
        tiles = f"{r['ours_tiles_run']}/{r['peer_tiles_run']}/{r['tiles_total']}"
        print(f"{r['configuration']:<11} {r['mode']:<5} {r['method']:<9} {r['ours_median_s']:>8.3f} "
              f"{r['peer_median_s']:>8.3f} {r['ratio_peer_over_ours']:>9.2f} {tiles:>22} {number(r, 'pearson_r'):>7} "
              f"{number(r, 'max_abs_diff'):>7} {number(fixed, 'pearson_r'):>7} {number(fixed, 'max_abs_diff'):>7}")
    print("r, max|d|: Pearson r and max |difference| of the two maps, each divided by its max, on the CT grid; "
          "r*, max|d|*: the same against the peer with its target indexed by the class (diagnostic)")


def main() -> None:
    """Parse the options, set up the case, the stub and the workers, print the rows and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", default="/work/scratch/peer/venv/bin/python",
                        help="python of a venv with nnunetv2-cam installed")
    parser.add_argument("--configs", default="3d_fullres,2d", help="nnU-Net configurations, comma-separated")
    parser.add_argument("--modes", default="full,core", help="full (file in, CT-grid map out) and/or core (tiles only)")
    parser.add_argument("--methods", default="hirescam,gradcam", help="peer method names (hirescam, gradcam)")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each package per row (after a warm-up)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/seghirescam_bench_nnunet"),
                        help="folder for the tiny nnU-Net results, the case, the stub and the maps")
    parser.add_argument("--out", type=Path, help="append one JSON line per row to this file")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker[0], json.loads(args.worker[1]))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    folders = ensure_folders(args.work)
    os.environ.update({k: v for k, v in nnunet_env(args.work).items() if k.startswith("nnUNet")})
    case, stub = write_case(args.work), write_stub(args.work)
    print(f"case {case}; class {CLASS}; CPU, {os.cpu_count()} CPUs; peer python {args.peer_python}; "
          f"torchvision stub {stub}", flush=True)
    rows = []
    for configuration in args.configs.split(","):
        rows += compare(configuration, folders[configuration], args, case, stub)
    print_table(rows)


if __name__ == "__main__":
    main()
