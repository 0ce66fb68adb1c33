"""Build tiny but real nnU-Net v2 results folders for tests.

Everything is produced by nnU-Net's own code paths, on CPU, without network access
and without torchvision:

1. a synthetic CT-like raw dataset (imagesTr/labelsTr .nii.gz + dataset.json) is
   written with SimpleITK and nnunetv2's ``generate_dataset_json``;
2. nnunetv2's ``DatasetFingerprintExtractor`` and ``ExperimentPlanner`` produce a
   real ``nnUNetPlans.json`` (2d and 3d_fullres). The only change to the planner is
   a smaller feature count (``UNet_base_num_features`` / ``UNet_max_features_*``)
   so that the networks are tiny; the architecture block is still nnU-Net-built;
3. for each configuration an ``nnUNetTrainer`` (nnU-Net's own class, instantiated
   directly, no class lookup) builds the network, runs a handful of real
   ``train_step`` / ``validation_step`` calls on crops of the training cases, goes
   through its epoch hooks and writes ``fold_all/checkpoint_final.pth`` with its
   own ``save_checkpoint`` (so the checkpoint format is exactly nnU-Net's). Then
   ``plans.json`` and ``dataset.json`` are copied into the results folder as
   ``nnUNetTrainer.on_train_start`` does.

Array axis order: SimpleITK arrays are (z, y, x); spacings are given here in the same
(z, y, x) order and reversed to (x, y, z) for ``SetSpacing``.

Usage (CLI): ``python Testing/nnunet_folders.py /tmp/somewhere``.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

DATASET_ID = 987
DATASET_NAME = f"Dataset{DATASET_ID:03d}_TinyKidney"
TRAIN_SPACINGS_ZYX: Tuple[Tuple[float, float, float], ...] = (
    (3.0, 1.5, 1.5), (3.0, 1.4, 1.4), (2.5, 1.6, 1.6), (3.0, 1.5, 1.5))
TRAIN_SHAPE_ZYX: Tuple[int, int, int] = (32, 48, 48)


def synthetic_ct(shape_zyx: Sequence[int], seed: int, zero_margin: Sequence[int] = (2, 3, 4)
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Make one CT-like volume with a bright "kidney" (label 1) and a "lesion" (label 2).

    The outer ``zero_margin`` voxels are exactly 0 (like a reconstruction FOV mask), so
    nnU-Net's ``crop_to_nonzero`` really crops.

    Args:
        shape_zyx: volume shape (z, y, x).
        seed: random seed.
        zero_margin: number of zero voxels at both ends of each axis (z, y, x).

    Returns:
        (image float32 (z, y, x) in HU, labels uint8 (z, y, x) with values {0, 1, 2}).
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    img = np.full(shape_zyx, -1000.0)
    body = (yy / 0.85) ** 2 + (xx / 0.9) ** 2 < 1
    img[body] = 40.0
    cz, cy, cx = rng.uniform(-0.3, 0.3, 3)
    kidney = ((zz - cz) / 0.45) ** 2 + ((yy - cy) / 0.35) ** 2 + ((xx - cx) / 0.3) ** 2 < 1
    lesion = ((zz - cz) / 0.2) ** 2 + ((yy - cy - 0.1) / 0.15) ** 2 + ((xx - cx) / 0.15) ** 2 < 1
    lesion &= kidney
    img[kidney] = 180.0
    img[lesion] = 90.0
    img += rng.normal(0, 15, shape_zyx)
    lab = np.zeros(shape_zyx, np.uint8)
    lab[kidney] = 1
    lab[lesion] = 2
    mz, my, mx = zero_margin
    edge = np.ones(shape_zyx, bool)
    edge[mz:shape_zyx[0] - mz, my:shape_zyx[1] - my, mx:shape_zyx[2] - mx] = False
    img[edge] = 0.0
    lab[edge] = 0
    return img.astype(np.float32), lab


def to_sitk(array_zyx: np.ndarray, spacing_zyx: Sequence[float],
            origin_xyz: Sequence[float] = (10.0, -5.0, 3.0)) -> sitk.Image:
    """Wrap a (z, y, x) array into a SimpleITK image.

    Args:
        array_zyx: array in SimpleITK's numpy order (z, y, x).
        spacing_zyx: spacing in the same (z, y, x) order (reversed for SimpleITK).
        origin_xyz: physical origin (x, y, z).

    Returns:
        The SimpleITK image.
    """
    im = sitk.GetImageFromArray(array_zyx)
    im.SetSpacing([float(s) for s in spacing_zyx[::-1]])
    im.SetOrigin([float(o) for o in origin_xyz])
    return im


def make_test_case(seed: int = 123, shape_zyx: Sequence[int] = (30, 72, 64),
                   spacing_zyx: Sequence[float] = (2.5, 1.2, 1.3)) -> Tuple[sitk.Image, np.ndarray]:
    """A held-out case, larger than the patch size and with a different spacing.

    Args:
        seed: random seed.
        shape_zyx: shape (z, y, x).
        spacing_zyx: spacing (z, y, x).

    Returns:
        (SimpleITK image, label array (z, y, x) uint8).
    """
    img, lab = synthetic_ct(shape_zyx, seed, zero_margin=(3, 5, 2))
    return to_sitk(img, spacing_zyx), lab


def write_raw_dataset(raw_root: Path, n_cases: int = 4, seed: int = 0) -> Path:
    """Write the raw dataset in nnU-Net format.

    Args:
        raw_root: the nnUNet_raw folder.
        n_cases: number of training cases (at most len(TRAIN_SPACINGS_ZYX)).
        seed: base random seed.

    Returns:
        The dataset folder ``raw_root/DatasetXXX_Name``.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    ds = raw_root / DATASET_NAME
    (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
    (ds / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        sp = TRAIN_SPACINGS_ZYX[i % len(TRAIN_SPACINGS_ZYX)]
        img, lab = synthetic_ct(TRAIN_SHAPE_ZYX, seed + i)
        sitk.WriteImage(to_sitk(img, sp), str(ds / "imagesTr" / f"case_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(to_sitk(lab, sp), str(ds / "labelsTr" / f"case_{i:03d}.nii.gz"))
    generate_dataset_json(str(ds), {0: "CT"}, {"background": 0, "kidney": 1, "lesion": 2},
                          n_cases, ".nii.gz", dataset_name=DATASET_NAME)
    return ds


def plan_dataset(base_features: int = 4, max_features: int = 16) -> Path:
    """Run nnU-Net's fingerprint extraction and ExperimentPlanner (no preprocessing).

    Args:
        base_features: ``UNet_base_num_features`` (nnU-Net default 32).
        max_features: cap for 2d and 3d feature counts (defaults 512/320).

    Returns:
        Path of the written plans file ``nnUNet_preprocessed/DatasetXXX/nnUNetPlans.json``.
    """
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import \
        DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import \
        ExperimentPlanner

    fpe = DatasetFingerprintExtractor(DATASET_ID, num_processes=1, verbose=False)
    fpe.show_progress_bar = False
    fpe.run(overwrite_existing=True)
    planner = ExperimentPlanner(DATASET_ID)
    planner.UNet_base_num_features = base_features
    planner.UNet_max_features_2d = max_features
    planner.UNet_max_features_3d = max_features
    planner.plan_experiment()
    return Path(os.environ["nnUNet_preprocessed"]) / DATASET_NAME / "nnUNetPlans.json"


def _crop_or_pad(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre-crop / zero-pad the trailing axes of ``a`` to ``shape``."""
    out = np.zeros(a.shape[:a.ndim - len(shape)] + tuple(shape), a.dtype)
    src, dst = [], []
    for n, m in zip(a.shape[a.ndim - len(shape):], shape):
        if n >= m:
            o = (n - m) // 2
            src.append(slice(o, o + m)); dst.append(slice(0, m))
        else:
            o = (m - n) // 2
            src.append(slice(0, n)); dst.append(slice(o, o + n))
    lead = (slice(None),) * (a.ndim - len(shape))
    out[lead + tuple(dst)] = a[lead + tuple(src)]
    return out


def _training_batch(trainer, n: int, seed: int) -> dict:
    """A batch in the trainer's format: data (B, C, *patch), target list (deep supervision).

    Crops of the (roughly normalised) synthetic cases; no augmentation. Only used to
    take a few real optimiser steps so that weights are not just the init.
    """
    import torch
    import torch.nn.functional as F

    patch = list(trainer.configuration_manager.patch_size)
    imgs, labs = [], []
    for i in range(n):
        img, lab = synthetic_ct(TRAIN_SHAPE_ZYX, seed + i)
        img = (img - 100.0) / 100.0
        if len(patch) == 2:
            z = TRAIN_SHAPE_ZYX[0] // 2 + i - n // 2
            img, lab = img[z], lab[z]
        imgs.append(_crop_or_pad(img, patch)[None])
        labs.append(_crop_or_pad(lab.astype(np.float32), patch)[None])
    data = torch.from_numpy(np.stack(imgs))
    target = torch.from_numpy(np.stack(labs))
    scales = trainer._get_deep_supervision_scales()
    targets = [F.interpolate(target, scale_factor=tuple(float(s) for s in sc), mode="nearest")
               if any(s != 1 for s in sc) else target for sc in scales]
    return {"data": data, "target": targets}


def train_and_save(plans_file: Path, dataset_json_file: Path, configuration: str,
                   train_steps: int = 2, seed: int = 0) -> Path:
    """Build, briefly train and checkpoint one configuration with nnU-Net's trainer.

    Args:
        plans_file: the planner's plans json.
        dataset_json_file: the raw dataset.json.
        configuration: '2d' or '3d_fullres'.
        train_steps: number of real optimiser steps.
        seed: torch seed for the initialisation.

    Returns:
        The results folder ``nnUNet_results/DatasetXXX/nnUNetTrainer__nnUNetPlans__CONFIG``.
    """
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    torch.manual_seed(seed)
    plans = load_json(str(plans_file))
    plans["continue_training"] = False  # what nnunetv2.run.run_training.get_trainer_from_args sets
    dataset_json = load_json(str(dataset_json_file))
    with contextlib.redirect_stdout(io.StringIO()):
        tr = nnUNetTrainer(plans, configuration, "all", dataset_json, device=torch.device("cpu"))
        # The parts of nnUNetTrainer.initialize() we need (initialize() also wants a
        # preprocessed data folder, which we skip to stay fast):
        tr.num_input_channels = determine_num_input_channels(tr.plans_manager, tr.configuration_manager,
                                                             dataset_json)
        tr.network = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager,
                                                   tr.num_input_channels,
                                                   tr.label_manager.num_segmentation_heads,
                                                   tr.enable_deep_supervision)
        tr.optimizer, tr.lr_scheduler = tr.configure_optimizers()
        tr.loss = tr._build_loss()
        tr.was_initialized = True
        tr.num_epochs = 1
        tr.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets inference_allowed_mirroring_axes
        tr.on_epoch_start()
        tr.on_train_epoch_start()
        outs = [tr.train_step(_training_batch(tr, 2, seed + 10 * k)) for k in range(train_steps)]
        tr.on_train_epoch_end(outs)
        tr.on_validation_epoch_start()
        with torch.no_grad():
            vouts = [tr.validation_step(_training_batch(tr, 2, seed + 100))]
        tr.on_validation_epoch_end(vouts)
        tr.on_epoch_end()
        tr.on_train_end()  # writes checkpoint_final.pth via save_checkpoint
    out = Path(tr.output_folder_base)
    # what nnUNetTrainer.on_train_start writes into the results folder
    shutil.copy(plans_file, out / "plans.json")
    shutil.copy(dataset_json_file, out / "dataset.json")
    fp = plans_file.parent / "dataset_fingerprint.json"
    if fp.is_file():
        shutil.copy(fp, out / "dataset_fingerprint.json")
    return out


def make_tiny_results(root: Path, configurations: Iterable[str] = ("2d", "3d_fullres"),
                      train_steps: int = 2, seed: int = 0,
                      base_features: int = 4, max_features: int = 16) -> Dict[str, Path]:
    """Create raw data, plans and trained tiny models below ``root``.

    Sets nnUNet_raw / nnUNet_preprocessed / nnUNet_results to sub-folders of ``root``
    (nnunetv2 reads these lazily through ``nnunetv2.paths``).

    Args:
        root: empty working folder.
        configurations: nnU-Net configurations to build.
        train_steps: optimiser steps per configuration.
        seed: random seed.
        base_features: planner's base feature count.
        max_features: planner's feature cap.

    Returns:
        {configuration: results folder}.
    """
    root = Path(root)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = str(root / k)
        (root / k).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_compile", "f")
    ds = write_raw_dataset(root / "nnUNet_raw", seed=seed)
    with contextlib.redirect_stdout(io.StringIO()):
        plans_file = plan_dataset(base_features, max_features)
    return {c: train_and_save(plans_file, ds / "dataset.json", c, train_steps, seed)
            for c in configurations}


def ensure_tiny_results(root: Path, configurations: Iterable[str] = ("2d", "3d_fullres")) -> Dict[str, Path]:
    """The tiny results folders below ``root``, built if missing.

    The build runs in a separate process (this file's ``main``), so the caller's ``nnUNet_*``
    environment variables stay unset.

    Returns:
        {configuration: results folder}.
    """
    results = Path(root) / "nnUNet_results" / DATASET_NAME
    folders = {c: results / f"nnUNetTrainer__nnUNetPlans__{c}" for c in configurations}
    if not all((f / "fold_all" / "checkpoint_final.pth").is_file() for f in folders.values()):
        import subprocess

        subprocess.run([sys.executable, str(Path(__file__).resolve()), str(root)], check=True)
    return folders


def replanned_copy(folder: Path, target: Path, configuration: str, spacing: Sequence[float],
                   patch_size: Sequence[int]) -> Path:
    """A copy of a results folder whose plans ask for another spacing and patch size (the same weights).

    The tiny networks are fully convolutional, so the same weights run at any spacing and at any
    patch size divisible by the strides.

    Args:
        folder: A results folder (``nnUNetTrainer__nnUNetPlans__<configuration>``).
        target: Where the copy goes (copied once; its plans are rewritten on every call).
        configuration: The configuration whose spacing and patch size change.
        spacing, patch_size: In nnU-Net's order (2 entries for 2d, (z, y, x) for 3d).

    Returns:
        target.
    """
    import json

    if not (target / "fold_all" / "checkpoint_final.pth").is_file():
        shutil.copytree(folder, target, dirs_exist_ok=True)
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    plans["configurations"][configuration].update({"spacing": list(spacing), "patch_size": list(patch_size)})
    (target / "plans.json").write_text(json.dumps(plans, indent=1), encoding="utf-8")
    return target


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: ``python Testing/nnunet_folders.py OUT_DIR``; prints the results folders and timing."""
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.time()
    folders = make_tiny_results(Path(argv[0]))
    for c, f in folders.items():
        print(c, f)
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
