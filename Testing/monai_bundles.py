"""Build small MONAI bundles and a synthetic CT for tests.

A bundle is written the way MONAI's tooling lays it out: ``configs/inference.json`` (exported by
``ConfigParser.export_config_file``), ``configs/metadata.json`` (MONAI's metadata schema:
``network_data_format.outputs.pred.channel_def``) and ``models/model.pt``, a state dict of the
network that MONAI's ``ConfigParser`` builds from ``network_def``, with seeded random weights.

Two kinds: a 2D ``monai.networks.nets.UNet`` run slice-wise by a ``SliceInferer`` (axial slices:
spatial_dim 2 after ``Orientationd(RAS)``; its ``Spacingd`` keeps the CT's spacing, so its frame
is an exact permutation and flip of the CT's grid), and a 3D ``BasicUNet`` run by a Gaussian
``SlidingWindowInferer`` after ``Spacingd`` and ``CropForegroundd``. Both window the CT with
``ScaleIntensityRanged``.

The CT: SimpleITK order (k, j, i), anisotropic spacing, a direction that swaps and flips the
in-plane axes, air around a soft-tissue body holding a bright blob.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from seghirescam.imaging.geometry import Geometry
from seghirescam.imaging.volumes import Volume

CLASSES = {"0": "background", "1": "kidney", "2": "tumor"}
WINDOW = {"a_min": -200.0, "a_max": 300.0, "b_min": 0.0, "b_max": 1.0, "clip": True}


def synthetic_ct(shape_kji: tuple[int, int, int] = (20, 48, 56)) -> tuple[Volume, np.ndarray]:
    """A CT-like volume and a blob mask, both (k, j, i).

    Returns:
        (CT in HU with spacing (0.8, 0.7, 2.5) mm along (i, j, k) and a swapped, flipped in-plane
        direction; bool mask of the bright blob).
    """
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape_kji], indexing="ij")
    ck, cj, ci = [n / 2 for n in shape_kji]
    body = ((j - cj) / (0.42 * shape_kji[1])) ** 2 + ((i - ci) / (0.42 * shape_kji[2])) ** 2 < 1
    blob = ((k - 0.35 * shape_kji[0]) / 3.0) ** 2 + ((j - 0.3 * shape_kji[1]) / 5.0) ** 2 \
        + ((i - 0.3 * shape_kji[2]) / 6.0) ** 2 < 1
    rng = np.random.default_rng(0)
    array = np.where(body, 40.0, -1000.0) + np.where(blob, 180.0, 0.0) + rng.normal(0, 10, shape_kji)
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # i -> +P, j -> -L (R), k -> S
    geometry = Geometry(spacing=(0.8, 0.7, 2.5), origin=(-20.0, 15.0, -30.0), direction=direction)
    return Volume(array.astype(np.int16), geometry), blob & body


def _config_2d() -> dict:
    return {
        "bundle_root": ".",
        "image_key": "image",
        "network_def": {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3,
                        "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            # the CT's own spacing in RAS order (j, i; k kept): the frame is an exact permutation of the CT
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [0.7, 0.8, -1.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "@image_key", **WINDOW},
            {"_target_": "EnsureTyped", "keys": "@image_key"}]},
        "inferer": {"_target_": "SliceInferer", "spatial_dim": 2, "roi_size": [32, 32], "sw_batch_size": 4,
                    "overlap": 0.25, "mode": "constant"},
    }


def _config_3d() -> dict:
    return {
        "bundle_root": ".",
        "network_def": {"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                        "features": [4, 4, 8, 8, 16, 4]},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.2, 1.0, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", **WINDOW},
            {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 1},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16], "sw_batch_size": 2,
                    "overlap": 0.5, "mode": "gaussian"},
    }


CONFIGS = {"2d": _config_2d, "3d": _config_3d}


def metadata(kind: str) -> dict:
    """MONAI bundle metadata (schema fields used by MONAI's model zoo) for a bundle kind."""
    spatial = [32, 32] if kind == "2d" else [32, 32, 16]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.1.0", "monai_version": "1.6.1", "name": f"Tiny {kind} kidney bundle",
        "task": "Kidney and tumour segmentation (random weights, for tests)",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": spatial, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                                 "spatial_shape": spatial, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": dict(CLASSES)}}},
    }


def build_network(config: dict, seed: int = 0) -> torch.nn.Module:
    """The config's network as MONAI's ConfigParser builds it, with seeded random weights."""
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    network = ConfigParser(config).get_parsed_content("network_def")
    with torch.no_grad():  # biases and norms away from their defaults, so every term of the identity counts
        for name, parameter in network.named_parameters():
            if name.endswith("bias"):
                parameter.uniform_(-0.3, 0.3)
    return network.eval()


def make_bundle(root: Path, kind: str, seed: int = 0, pixdim: list[float] | None = None) -> Path:
    """Write a bundle folder ``root/<kind>_bundle`` and return it.

    Args:
        root: Where the folder goes.
        kind: "2d" or "3d".
        seed: Seeds the random weights.
        pixdim: The ``Spacingd`` spacing (RAS order, mm; -1 keeps an axis) instead of the kind's own.
    """
    from monai.bundle import ConfigParser

    folder = Path(root) / f"{kind}_bundle"
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    config = CONFIGS[kind]()
    if pixdim is not None:
        spacing = next(t for t in config["preprocessing"]["transforms"] if t["_target_"] == "Spacingd")
        spacing["pixdim"] = list(pixdim)
    ConfigParser.export_config_file(config, str(folder / "configs" / "inference.json"), indent=2)
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata(kind), indent=2), encoding="utf-8")
    torch.save(build_network(config, seed).state_dict(), folder / "models" / "model.pt")
    return folder
