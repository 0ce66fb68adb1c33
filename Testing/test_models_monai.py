"""MONAI bundles: loading, prediction equal to MONAI's own inferer, CAMs of the stitched logits on the CT's grid.

Two tiny bundles are written with MONAI's API (``monai_bundles.py``): a 2D ``UNet`` run slice-wise by a
``SliceInferer`` and a 3D ``BasicUNet`` run by a Gaussian ``SlidingWindowInferer``; both window the CT
with ``ScaleIntensityRanged``. The CT is synthetic (bright blob, swapped and flipped in-plane direction,
anisotropic spacing). torchvision and timm are blocked for the whole session (conftest).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_module

require_module("monai")

import monai_bundles as mb  # noqa: E402

from seghirescam.models.explainable import ExplainableModel, family_of, load_explainable_model  # noqa: E402
from seghirescam.models.monai_bundle import BundleError, MonaiBundleModel, load_monai_bundle  # noqa: E402

HIRES, GRAD = "seg-hires-grad-cam", "seg-grad-cam"
KINDS = ("2d", "3d")
SHAPES = {"2d": (20, 48, 56), "3d": (20, 80, 96)}  # (k, j, i)
TUMOR = 2
REL = 1e-4


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {kind: mb.make_bundle(root, kind) for kind in KINDS}


@pytest.fixture(scope="module")
def models(bundles) -> dict[str, MonaiBundleModel]:
    return {kind: load_monai_bundle(folder) for kind, folder in bundles.items()}


def _monai_logits(folder: Path, model: MonaiBundleModel, prepared) -> torch.Tensor:
    """MONAI's own inferer from the bundle's config, run with the bundle's network: (K, a0, a1, a2)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    with torch.no_grad():
        return parser.get_parsed_content("inferer")(prepared[None], model.network)[0].as_tensor().float()


@pytest.mark.parametrize("kind", KINDS)
def test_bundle_loads_through_the_model_interface(bundles, kind):
    model = load_explainable_model(bundles[kind])
    assert isinstance(model, MonaiBundleModel) and isinstance(model, ExplainableModel)
    assert family_of(bundles[kind]).name.startswith("MONAI bundle")
    assert model.class_names == ("background", "kidney", "tumor")
    assert model.spatial_dims == (2 if kind == "2d" else 3)
    assert model.default_layer in model.layers
    assert model.head_input_layers == (("upcat_1",) if kind == "3d" else ())
    assert model.class_for_segment("Left kidney") == 1
    assert "Tiny" in model.name


@pytest.mark.parametrize("kind", KINDS)
def test_prediction_equals_monai_inferer(bundles, models, kind):
    model = models[kind]
    ct, _ = mb.synthetic_ct(SHAPES[kind])
    prepared = model.preprocess_ct(ct)
    ours = model.network_logits(prepared, device="cpu")
    reference = _monai_logits(bundles[kind], model, prepared)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    top2 = reference.topk(2, dim=0).values
    ties = (top2[0] - top2[1]) < 1e-4
    labels = reference.argmax(0)
    assert bool(((ours.argmax(0) == labels) | ties).all())
    labels[ties] = ours.argmax(0)[ties]  # "identical up to ties"
    expected = model.to_ct_grid(prepared, labels[None].float(), ct, nearest=True)[0]
    predicted = model.predict_ct(ct, device="cpu")
    assert predicted.shape == ct.array.shape and predicted.dtype == np.uint8
    np.testing.assert_array_equal(predicted, expected.astype(np.uint8))
    assert set(np.unique(predicted)) <= {0, 1, 2}


def test_2d_frame_is_an_exact_permutation_of_the_ct(models):
    """The 2D bundle keeps the CT's spacing: its frame and the way back must be exact."""
    from monai.transforms import ScaleIntensityRange

    model = models["2d"]
    ct, blob = mb.synthetic_ct(SHAPES["2d"])
    prepared = model.preprocess_ct(ct)
    back = model.to_ct_grid(prepared, prepared.as_tensor(), ct, nearest=False)[0]
    windowed = np.asarray(ScaleIntensityRange(**mb.WINDOW)(torch.from_numpy(ct.array.astype(np.float32))))
    np.testing.assert_allclose(back, windowed, atol=1e-5)
    mask_net = model.mask_to_network_frame(prepared, blob, ct)
    round_trip = model.to_ct_grid(prepared, mask_net[None].float(), ct, nearest=True)[0]
    np.testing.assert_array_equal(round_trip > 0.5, blob)


@pytest.mark.parametrize("kind", KINDS)
def test_explanation_on_the_ct_grid(bundles, models, kind):
    model = models[kind]
    ct, blob = mb.synthetic_ct(SHAPES[kind])
    layers = (model.default_layer, *model.head_input_layers)
    result = model.explain_ct(ct, blob, TUMOR, layers=layers, methods=(HIRES, GRAD), device="cpu", normalize="none")
    assert set(result.maps) == {(m, layer) for m in (HIRES, GRAD) for layer in layers}
    for key, volume in result.maps.items():
        assert volume.shape == ct.array.shape, key
        assert np.isfinite(volume).all() and (volume >= 0).all(), key
    assert result[(HIRES, layers[-1])].max() > 0
    # y_M is the sum over M of the logits MONAI's inferer stitches
    prepared = model.preprocess_ct(ct)
    mask_net = model.mask_to_network_frame(prepared, blob, ct)
    reference = _monai_logits(bundles[kind], model, prepared)
    y_ref = float(reference[TUMOR].double()[mask_net].sum())
    assert result.extra["y_m"] == pytest.approx(y_ref, rel=REL)
    assert result.extra["m_voxels_network"] == int(mask_net.sum()) > 0
    assert 0 < result.extra["tiles_run"] < result.extra["tiles_total"]
    hires = result[(HIRES, layers[-1])]
    if kind == "2d":  # slice-wise: slices without M are never run
        empty = ~blob.any(axis=(1, 2))
        assert empty.any() and not hires[empty].any() and hires[~empty].any()
    else:  # voxels further along i than a window (32 voxels of 1.0 mm in the frame) from M: no tile of M
        i_mm = np.arange(ct.array.shape[2]) * ct.geometry.spacing[0]
        blob_i = i_mm[blob.any(axis=(0, 1))]
        far = (i_mm > blob_i.max() + 34.0) | (i_mm < blob_i.min() - 34.0)
        assert far.any() and not hires[:, :, far].any()


def test_3d_seg_hires_exactness_at_the_head_input(models):
    """Sum of layer-resolution Seg-HiRes-Grad CAM maps at the layer feeding the 1x1 head = y_M - bias terms."""
    model = models["3d"]
    ct, blob = mb.synthetic_ct(SHAPES["3d"])
    layer = model.head_input_layers[0]
    result = model.explain_ct(ct, blob, TUMOR, layers=(layer,), methods=(HIRES,), device="cpu", normalize="volume")
    bias = float(model.network.final_conv.bias.detach()[TUMOR])
    expected = result.extra["y_m"] - bias * result.extra["m_voxels_network"]
    assert result.extra["raw_sums"][f"{HIRES}@{layer}"] == pytest.approx(expected, rel=REL)
    assert float(result[(HIRES, layer)].max()) == pytest.approx(1.0)


def _rewrite_config(folder: Path, change) -> None:
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _missing_config(folder: Path) -> None:
    (folder / "configs" / "inference.json").unlink()


def _missing_weights(folder: Path) -> None:
    (folder / "models" / "model.pt").unlink()


def _pickled_weights(folder: Path) -> None:
    config = json.loads((folder / "configs" / "inference.json").read_text())
    torch.save(mb.build_network(config), folder / "models" / "model.pt")  # a whole module: needs unpickling


def _shape_mismatch(folder: Path) -> None:
    _rewrite_config(folder, lambda c: c["network_def"].update(features=[4, 4, 8, 8, 32, 4]))


def _unsupported_transform(folder: Path) -> None:
    _rewrite_config(folder, lambda c: c["preprocessing"]["transforms"].insert(
        3, {"_target_": "Resized", "keys": "image", "spatial_size": [32, 32, 16]}))


BAD_BUNDLES = {
    "missing config": (_missing_config, "inference.json", "not found"),
    "missing weights": (_missing_weights, "model.pt", "not found"),
    "pickled weights": (_pickled_weights, "model.pt", "pickled"),
    "shape mismatch": (_shape_mismatch, "model.pt", "does not fit"),
    "unsupported transform": (_unsupported_transform, "inference.json", "Resized"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bad_bundle_gives_one_clear_error(bundles, tmp_path, case):
    spoil, file_name, words = BAD_BUNDLES[case]
    folder = shutil.copytree(bundles["3d"], tmp_path / "bundle")
    spoil(folder)
    with pytest.raises(BundleError) as caught:
        load_explainable_model(folder)
    assert issubclass(BundleError, ValueError)
    message = str(caught.value)
    assert file_name in message and words in message, message


def test_config_expressions_need_trust(bundles, tmp_path):
    folder = shutil.copytree(bundles["3d"], tmp_path / "bundle")
    _rewrite_config(folder, lambda c: c["preprocessing"]["transforms"][3].update(pixdim="$[1.2, 1.0, 2.0]"))
    with pytest.raises(BundleError, match="trust_code"):
        load_monai_bundle(folder)
    assert load_monai_bundle(folder, trust_code=True).spatial_dims == 3


@pytest.mark.parametrize("kind", KINDS)
def test_cli_explains_a_bundle_with_the_cts_geometry(bundles, tmp_path, kind):
    import json

    import SimpleITK as sitk

    from seghirescam.cli import main
    from seghirescam.imaging.volumes import Volume, write_volume

    ct, blob = mb.synthetic_ct()
    ct_path = write_volume(ct, tmp_path / "ct.nii.gz")
    write_volume(Volume(blob.astype(np.uint8) * TUMOR, ct.geometry), tmp_path / "labels.nii.gz")
    out = tmp_path / "out"
    assert main(["explain", "--model", str(bundles[kind]), "--ct", str(ct_path), "--seg",
                 str(tmp_path / "labels.nii.gz"), "--label", str(TUMOR), "--target-class", str(TUMOR),
                 "--out", str(out), "--device", "cpu"]) == 0
    record = json.loads((out / "summary.json").read_text(encoding="utf-8"))["targets"][0]
    heat_path = next(path for name, path in record["files"].items() if name.startswith("seg-hires-grad-cam@"))
    heat, reference = sitk.ReadImage(heat_path), sitk.ReadImage(str(ct_path))
    assert heat.GetSize() == reference.GetSize()
    for a, b in ((heat.GetSpacing(), reference.GetSpacing()), (heat.GetOrigin(), reference.GetOrigin()),
                 (heat.GetDirection(), reference.GetDirection())):
        assert np.allclose(a, b)
    assert sitk.GetArrayFromImage(heat).max() == pytest.approx(1.0)
