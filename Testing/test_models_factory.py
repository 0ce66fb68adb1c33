"""Any network by factory: a named function builds it, safetensors weights fill it, a card describes it.

The factory lives in the test helper module ``factory_nets.py`` (a plain PyTorch encoder-decoder, not
the project's U-Net). The model is explained slice by slice on a small CT with a non-identity
direction, exactly as the project's own U-Net is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import factory_nets
from seghirescam.cam.engine import explain_volume
from seghirescam.imaging.geometry import Geometry
from seghirescam.imaging.volumes import SliceOrientation, Volume
from seghirescam.models.card import CardError, ModelCard
from seghirescam.models.explainable import ExplainableModel
from seghirescam.models.factory import FactoryError, load_factory_model

FACTORY = "factory_nets:tiny_segnet"
HIRES, GRAD = "seg-hires-grad-cam", "seg-grad-cam"
CLASSES = ("background", "kidney", "tumor")


def _card(tmp_path: Path, name: str = "tiny", **architecture: object) -> Path:
    arch = {"type": "factory", "in_channels": 1, "num_classes": 3, "kwargs": {"width": 4}, **architecture}
    card = ModelCard(name=name, architecture=arch, classes=CLASSES, hu_clip=(-200.0, 300.0), mean=50.0, std=100.0,
                     size_multiple=4)
    return card.save(tmp_path / f"{name}.card.json")


@pytest.fixture
def weights(tmp_path) -> Path:
    network = factory_nets.tiny_segnet(width=4)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # not the factory's own initial weights
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


def _ct() -> tuple[Volume, np.ndarray]:
    """A (k, j, i) CT with a flipped, swapped in-plane direction and a blob mask on slices 2..4."""
    k, j, i = np.meshgrid(np.arange(7), np.arange(36), np.arange(40), indexing="ij")
    blob = ((k - 3) / 1.5) ** 2 + ((j - 12) / 5.0) ** 2 + ((i - 25) / 6.0) ** 2 < 1
    rng = np.random.default_rng(1)
    array = (np.where(blob, 160.0, 30.0) + rng.normal(0, 15, blob.shape)).astype(np.int16)
    geometry = Geometry(spacing=(0.8, 0.9, 3.0), origin=(5.0, -7.0, 11.0),
                        direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    return Volume(array, geometry), blob


def test_factory_model_is_explained_end_to_end(tmp_path, weights):
    model = load_factory_model(FACTORY, weights, _card(tmp_path))
    assert isinstance(model, ExplainableModel) and model.spatial_dims == 2
    assert model.class_names == CLASSES and "factory_nets:tiny_segnet" in model.family
    assert model.head_input_layers == ("up1",) and "deep" in model.layers  # found by one forward pass
    ct, blob = _ct()
    layers = ("up1", model.default_layer)
    result = model.explain_ct(ct, blob, 2, layers=layers, methods=(HIRES, GRAD), device="cpu", normalize="none",
                              batch_size=2)
    for key, volume in result.maps.items():
        assert volume.shape == ct.array.shape and np.isfinite(volume).all() and (volume >= 0).all(), key
    hires = result[(HIRES, "up1")]
    empty = ~blob.any(axis=(1, 2))
    assert hires.max() > 0 and not hires[empty].any()
    # the same maps as the engine gives for the factory's network with these weights, on the oriented slices
    from safetensors.torch import load_file

    network = factory_nets.tiny_segnet(width=4)
    network.load_state_dict(load_file(str(weights)))
    orientation = SliceOrientation.from_geometry(ct.geometry)
    direct = explain_volume(network.eval(), orientation.to_slices(ct.array), orientation.to_slices(blob), 2,
                            layers=layers, methods=(HIRES, GRAD), device="cpu", normalize="none",
                            preprocess=model.card.preprocess, pad_to_multiple=4, batch_size=2)
    for key in result.maps:
        np.testing.assert_allclose(result[key], orientation.from_slices(direct[key]), rtol=1e-5, atol=1e-6)
    labels = model.predict_ct(ct, device="cpu")
    assert labels.shape == ct.array.shape and set(np.unique(labels)) <= {0, 1, 2}


@pytest.mark.parametrize("factory, words", [
    ("factory_nets.tiny_segnet", "package.module:function"),
    ("factory_nets:tiny segnet", "package.module:function"),
    ("no_such_module_for_seghirescam:make", "cannot be imported"),
    ("factory_nets:no_such_function", "has no function 'no_such_function'"),
    ("factory_nets:NOT_A_FUNCTION", "not a function"),
    ("factory_nets:not_a_network", "not a torch.nn.Module"),
    ("factory_nets:broken_factory", "failed when called with the card's kwargs"),
    ("factory_nets:network_1d", "no 2D or 3D convolution"),
])
def test_bad_factory_gives_one_clear_error(tmp_path, weights, factory, words):
    with pytest.raises(FactoryError, match=words.replace(".", r"\.")):
        load_factory_model(factory, weights, _card(tmp_path))


def test_weights_that_do_not_fit(tmp_path, weights):
    card = _card(tmp_path, kwargs={"width": 8})
    with pytest.raises(FactoryError) as caught:
        load_factory_model(FACTORY, weights, card)
    assert str(weights) in str(caught.value) and "does not fit" in str(caught.value)


def test_pickled_weights_are_refused(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(factory_nets.tiny_segnet(), path)
    with pytest.raises(FactoryError, match="pickled"):
        load_factory_model(FACTORY, path, _card(tmp_path))


def test_state_dict_pt_and_card_disagreeing_on_classes(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(factory_nets.tiny_segnet(num_classes=2).state_dict(), path)
    card = _card(tmp_path, kwargs={"width": 4, "num_classes": 2})  # the card still says 3 classes
    with pytest.raises(CardError, match="3 classes"):
        load_factory_model(FACTORY, path, card)


def test_cli_explains_a_factory_model(tmp_path, weights, capsys):
    from seghirescam.cli import main
    from seghirescam.imaging.volumes import write_volume

    card = _card(tmp_path)
    ct, blob = _ct()
    write_volume(ct, tmp_path / "ct.nrrd")
    write_volume(Volume(blob.astype(np.uint8), ct.geometry), tmp_path / "labels.nrrd")
    base = ["explain", "--ct", str(tmp_path / "ct.nrrd"), "--seg", str(tmp_path / "labels.nrrd"), "--label", "1",
            "--target-class", "1", "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(base + ["--model-factory", "factory_nets:tiny_segnet", "--model", str(weights), "--card",
                        str(card)]) == 0
    assert list((tmp_path / "out").glob("*_seg-hires-grad-cam_*.nrrd"))
    base[base.index("--out") + 1] = str(tmp_path / "failed")  # a fresh folder: "out" holds the first run's results
    assert main(base + ["--model-factory", "factory_nets:tiny_segnet"]) == 2  # no weights
    assert main(base + ["--model-factory", "factory_nets:nowhere", "--model", str(weights), "--card", str(card)]) == 2
    err = capsys.readouterr().err
    assert "--model-factory needs --model" in err and "nowhere" in err and "Traceback" not in err


# --- 3D networks: volumetric CAMs over the card's sliding window -------------------------------------------------

FACTORY_3D = "factory_nets:tiny_segnet_3d"
WINDOW = {"patch_size": [4, 16, 16], "overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.125}


def _card_3d(tmp_path: Path, window: object = WINDOW) -> Path:
    arch = {"type": "factory", "in_channels": 1, "num_classes": 3, "spatial_dims": 3, "kwargs": {"width": 4}}
    card = ModelCard(name="tiny3d", architecture=arch, classes=CLASSES, hu_clip=(-200.0, 300.0), mean=50.0,
                     std=100.0, size_multiple=2, sliding_window=window)
    return card.save(tmp_path / "tiny3d.card.json")


@pytest.fixture
def weights_3d(tmp_path) -> Path:
    network = factory_nets.tiny_segnet_3d(width=4)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    path = tmp_path / "tiny3d.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


def _ct_3d() -> tuple[Volume, np.ndarray]:
    """``_ct`` with M asymmetric along every axis (the upper half of the blob), so flips show."""
    ct, blob = _ct()
    return ct, blob & (np.arange(blob.shape[0])[:, None, None] >= 3)


def _network_3d(weights: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    network = factory_nets.tiny_segnet_3d(width=4)
    network.load_state_dict(load_file(str(weights)))
    return network.eval()


def test_3d_factory_model_predicts_as_monai_on_the_card_frame(tmp_path, weights_3d):
    pytest.importorskip("monai")
    from monai.inferers import sliding_window_inference

    model = load_factory_model(FACTORY_3D, weights_3d, _card_3d(tmp_path))
    assert isinstance(model, ExplainableModel) and model.spatial_dims == 3
    assert model.head_input_layers == ("up",) and "deep" in model.layers
    ct, _blob = _ct()
    orientation = SliceOrientation.from_geometry(ct.geometry)
    frame = torch.from_numpy(np.ascontiguousarray(orientation.to_slices(ct.array), dtype=np.float32))
    x = ((frame.clamp(-200, 300) - 50.0) / 100.0)[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(x, (4, 16, 16), 1, _network_3d(weights_3d), overlap=0.5, mode="gaussian",
                                          sigma_scale=0.125)[0]
    expected = orientation.from_slices(logits.argmax(0).numpy())
    np.testing.assert_array_equal(model.predict_ct(ct, device="cpu"), expected)


def test_3d_factory_explanation_is_exact_and_on_the_ct_grid(tmp_path, weights_3d):
    pytest.importorskip("monai")
    model = load_factory_model(FACTORY_3D, weights_3d, _card_3d(tmp_path))
    ct, blob = _ct_3d()
    result = model.explain_ct(ct, blob, 2, layers=("up", "deep"), methods=(HIRES, GRAD), device="cpu",
                              normalize="none")
    for key, volume in result.maps.items():
        assert volume.shape == ct.array.shape and (volume >= 0).all() and volume.max() > 0, key
    # exactness at the layer feeding the 1x1x1 head: sum of pre-ReLU HiRes maps = y_M - bias_c x |M|
    bias = float(_network_3d(weights_3d).head.bias[2].detach())
    y_m = result.extra["y_m"]
    identity = y_m - bias * int(blob.sum())
    assert result.extra["raw_sums"][f"{HIRES}@up"] == pytest.approx(identity, rel=1e-4, abs=1e-4)
    # y_M is the sum over M of the stitched logits the prediction uses
    orientation = SliceOrientation.from_geometry(ct.geometry)
    from monai.inferers import sliding_window_inference

    frame = torch.from_numpy(np.ascontiguousarray(orientation.to_slices(ct.array), dtype=np.float32))
    x = ((frame.clamp(-200, 300) - 50.0) / 100.0)[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(x, (4, 16, 16), 1, _network_3d(weights_3d), overlap=0.5, mode="gaussian",
                                          sigma_scale=0.125)[0, 2]
    stitched = orientation.from_slices(logits.numpy())
    assert y_m == pytest.approx(float(stitched[blob].sum()), rel=1e-4)


def test_3d_factory_maps_follow_the_voxels_whatever_the_storage_order(tmp_path, weights_3d):
    """The same patient stored in two axis orders (KiTS-like: axial axis last) gives the same map per voxel."""
    pytest.importorskip("monai")
    model = load_factory_model(FACTORY_3D, weights_3d, _card_3d(tmp_path))
    ct, blob = _ct_3d()
    stored = Volume(np.ascontiguousarray(ct.array.transpose(2, 1, 0)),
                    Geometry(spacing=ct.geometry.spacing[::-1], origin=ct.geometry.origin,
                             direction=tuple(np.asarray(ct.geometry.direction).reshape(3, 3)[:, ::-1].ravel())))
    np.testing.assert_allclose(stored.geometry.ijk_to_ras() @ [1, 2, 3, 1], ct.geometry.ijk_to_ras() @ [3, 2, 1, 1])
    a = model.explain_ct(ct, blob, 2, layers=("up",), methods=(HIRES,), device="cpu", normalize="none")
    b = model.explain_ct(stored, np.ascontiguousarray(blob.transpose(2, 1, 0)), 2, layers=("up",), methods=(HIRES,),
                         device="cpu", normalize="none")
    np.testing.assert_allclose(b[(HIRES, "up")], a[(HIRES, "up")].transpose(2, 1, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window, words", [
    ({}, "sliding_window.patch_size"),
    ({"patch_size": [4, 16]}, "sliding_window.patch_size"),
    ({"patch_size": [3, 16, 16]}, "multiples of size_multiple 2"),
    ({"patch_size": [4, 16, 16], "overlap": 1.0}, "overlap"),
    ({"patch_size": [4, 16, 16], "mode": "linear"}, "mode"),
])
def test_3d_card_without_a_valid_window_is_refused(tmp_path, weights_3d, window, words):
    pytest.importorskip("monai")
    with pytest.raises(CardError, match=words):
        load_factory_model(FACTORY_3D, weights_3d, _card_3d(tmp_path, window))


def test_cli_explains_a_3d_factory_model(tmp_path, weights_3d, capsys):
    pytest.importorskip("monai")
    from seghirescam.cli import main
    from seghirescam.imaging.volumes import read_volume, write_volume

    ct, blob = _ct_3d()
    write_volume(ct, tmp_path / "ct.nrrd")
    write_volume(Volume(blob.astype(np.uint8), ct.geometry), tmp_path / "labels.nrrd")
    code = main(["explain", "--ct", str(tmp_path / "ct.nrrd"), "--seg", str(tmp_path / "labels.nrrd"),
                 "--label", "1", "--target-class", "2", "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--model-factory", FACTORY_3D, "--model", str(weights_3d), "--card", str(_card_3d(tmp_path))])
    assert code == 0, capsys.readouterr().err
    written = sorted((tmp_path / "out").glob("*_seg-hires-grad-cam_*.nrrd"))
    assert written
    heatmap = read_volume(written[0])
    assert heatmap.array.shape == ct.array.shape
    np.testing.assert_allclose(heatmap.geometry.ijk_to_ras(), ct.geometry.ijk_to_ras(), atol=1e-5)
