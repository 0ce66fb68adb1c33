"""nnU-Net v2 models: loading, prediction equal to nnU-Net's own predictor, and exact CAMs.

A tiny real results folder (2d + 3d_fullres) is built once per session by ``nnunet_folders.py``
with nnU-Net's own planner and trainer code (about 30 s on 2 cores). torchvision and timm are
blocked for the whole session (conftest), so everything here runs without them.
"""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_module

require_module("nnunetv2")

import nnunet_folders as mk  # noqa: E402

from seghirescam.cam.capture import ActivationCapture  # noqa: E402
from seghirescam.imaging.volumes import Volume  # noqa: E402
from seghirescam.models.nnunet import NnUNetModel, folder, frames, sliding_window  # noqa: E402

nm = types.SimpleNamespace(**{**vars(folder), **vars(frames), **vars(sliding_window)})
HIRES, GRAD = "seg-hires-grad-cam", "seg-grad-cam"
CONFIGS = ("2d", "3d_fullres")
REL = 1e-4
# Building the tiny nnU-Net folders with nnU-Net's planner and trainer takes ~20 s: the whole module is "slow"
# (CI runs it; `pytest -m "not slow"` leaves it out).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def folders(tiny_nnunet_root) -> dict:
    """{configuration: results folder} of the session's tiny nnU-Net models (nnunetv2's paths point at them)."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[key] = str(tiny_nnunet_root / key)
    os.environ.setdefault("nnUNet_compile", "f")
    return mk.ensure_tiny_results(tiny_nnunet_root)


@pytest.fixture(scope="session")
def case():
    """(SimpleITK image, label (z, y, x)) of a held-out case with another spacing."""
    return mk.make_test_case()


@pytest.fixture(scope="session")
def ensemble_folder(folders, tmp_path_factory) -> Path:
    """Copy of the 3d_fullres folder with fold_0 / fold_1 = perturbed copies of fold_all."""
    dst = tmp_path_factory.mktemp("ens") / folders["3d_fullres"].name
    shutil.copytree(folders["3d_fullres"], dst)
    ck = torch.load(dst / "fold_all" / "checkpoint_final.pth", weights_only=False)
    gen = torch.Generator().manual_seed(5)
    for f in (0, 1):
        c = dict(ck)
        c["network_weights"] = {k: (v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point()
                                    else v) for k, v in ck["network_weights"].items()}
        (dst / f"fold_{f}").mkdir()
        torch.save(c, dst / f"fold_{f}" / "checkpoint_final.pth")
    return dst


def _explain(loaded, image, mask_zyx, c, layers, methods=(HIRES, GRAD), use_mirroring=False, normalize="none"):
    """The package's explanation of an nnU-Net model on a SimpleITK image (maps (z, y, x))."""
    model = NnUNetModel(loaded, use_mirroring=use_mirroring)
    return model.explain_ct(Volume.from_sitk(image), np.asarray(mask_zyx, bool), c, layers=layers, methods=methods,
                            device="cpu", normalize=normalize)


def _nnunet_predictor(folder: Path, folds, monkeypatch, use_mirroring: bool = False):
    """nnUNetPredictor on CPU; the trainer-class lookup is patched to nnUNetTrainer.

    ``recursive_find_trainer_class_by_name`` would import every trainer module (some
    pull in timm -> torchvision); returning nnUNetTrainer directly avoids that.
    """
    import nnunetv2.inference.predict_from_raw_data as pfr
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setattr(pfr, "recursive_find_trainer_class_by_name", lambda name: nnUNetTrainer)
    p = pfr.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                            perform_everything_on_device=False, device=torch.device("cpu"),
                            verbose=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    return p


def _assert_seg_equal_up_to_ties(ours: np.ndarray, theirs: np.ndarray, probs: np.ndarray) -> None:
    """Segmentations equal except where the top two probabilities tie (within 1e-4)."""
    diff = ours != theirs
    if diff.any():
        top2 = np.sort(probs, axis=0)[-2:]
        assert np.all(np.abs(top2[1] - top2[0])[diff] < 1e-4), f"{diff.sum()} non-tie voxel(s) differ"


def _rel_close(a: np.ndarray, b: np.ndarray, rel: float = REL) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b)) <= rel * max(np.max(np.abs(b)), 1e-12)


# ------------------------------------------------------------ (i) prediction equality

@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("mirroring", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_prediction_matches_nnunet_predictor(folders, case, monkeypatch, config, mirroring):
    image, _ = case
    model = nm.load_nnunet_folder(folders[config])
    pred = _nnunet_predictor(folders[config], ("all",), monkeypatch, mirroring)
    arr, spacing = nm.image_to_nnunet_array(image)
    seg_ref, prob_ref = pred.predict_single_npy_array(arr, {"spacing": spacing}, None, None, True)
    seg, prob = nm.predict_nnunet(model, image, use_mirroring=mirroring)
    assert seg.shape == arr.shape[1:] and prob.shape == (3, *arr.shape[1:])
    _assert_seg_equal_up_to_ties(seg, seg_ref, prob_ref)
    _rel_close(prob, prob_ref)
    pre = nm.preprocess(model, image)
    logits_ref = pred.predict_logits_from_preprocessed_data(torch.from_numpy(pre.data)).float().numpy()
    logits = nm.sliding_window_logits(model, torch.from_numpy(pre.data),
                                      use_mirroring=mirroring).float().numpy()
    _rel_close(logits, logits_ref)
    assert len(np.unique(seg)) > 1  # not a trivial prediction
    assert sys.modules.get("torchvision") is None  # blocked by conftest: never imported for real


@pytest.mark.parametrize("config", CONFIGS)
def test_slicers_match_nnunet(folders, monkeypatch, config):
    model = nm.load_nnunet_folder(folders[config])
    pred = _nnunet_predictor(folders[config], ("all",), monkeypatch)
    for shape in [(20, 50, 52), (35, 97, 41), tuple(model.patch_size[-3:]) if config != "2d" else (3, 48, 40)]:
        assert nm.sliding_window_slicers(model, shape) == pred._internal_get_sliding_window_slicers(shape)


def test_ensemble_prediction_matches_nnunet(ensemble_folder, case, monkeypatch):
    image, _ = case
    model = nm.load_nnunet_folder(ensemble_folder, folds=(0, 1))
    assert len(model.state_dicts) == 2
    pred = _nnunet_predictor(ensemble_folder, (0, 1), monkeypatch)
    arr, spacing = nm.image_to_nnunet_array(image)
    seg_ref, prob_ref = pred.predict_single_npy_array(arr, {"spacing": spacing}, None, None, True)
    seg, prob = nm.predict_nnunet(model, image)
    _assert_seg_equal_up_to_ties(seg, seg_ref, prob_ref)
    _rel_close(prob, prob_ref)


# ------------------------------------------------------------ (ii) exactness identity

def _last_decoder_stage(model) -> str:
    return [n for n in model.layer_names if n.startswith("decoder.")][-1]


def _check_identity(model, image, mask_zyx, c, use_mirroring=False):
    """Seg-HiRes at the layer feeding the head: sum of layer-resolution maps = y_M - bias terms."""
    pre = nm.preprocess(model, image)
    mask_net = nm.mask_to_network_frame(model, pre, mask_zyx)
    layer = _last_decoder_stage(model)
    result = _explain(model, image, mask_zyx, c, [layer, model.default_layer], use_mirroring=use_mirroring)
    biases = [float(state["decoder.seg_layers.%d.bias" % (len(model.network.decoder.seg_layers) - 1)][c])
              for state in model.state_dicts]
    bias_term = float(np.mean(biases)) * int(mask_net.sum())
    lhs = result.extra["raw_sums"][f"{HIRES}@{layer}"]
    rhs = result.extra["y_m"] - bias_term
    assert abs(lhs - rhs) <= REL * abs(rhs), (lhs, rhs)
    return result, pre, mask_net


def _stitched_y_m_float32(model, data, mask_net, c) -> float:
    """Independent y_M: stitch patch logits in float32 (no fp16), average folds, sum over M."""
    gauss = nm.gaussian_weights(model).float()
    padded, revert = nm.pad_to_patch(model, data)
    total = torch.zeros(padded.shape[1:], dtype=torch.float64)
    for sd in model.state_dicts:
        model.network.load_state_dict(sd)
        num = torch.zeros(padded.shape[1:])
        den = torch.zeros(padded.shape[1:])
        for sl in nm.sliding_window_slicers(model, padded.shape[1:]):
            with torch.no_grad():
                out = model.network(padded[sl][None])[0, c]
            num[sl[1:]] += out * gauss
            den[sl[1:]] += gauss
        total += (num / den).double() / len(model.state_dicts)
    model.network.load_state_dict(model.state_dicts[0])
    return float(total[tuple(revert[1:])][torch.from_numpy(mask_net)].sum())


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("c", [1, 2])
def test_exactness_identity(folders, case, config, c):
    image, lab = case
    model = nm.load_nnunet_folder(folders[config])
    result, pre, mask_net = _check_identity(model, image, lab == c, c)
    # y_M is really the sum over M of the stitched logits
    y_ref = _stitched_y_m_float32(model, torch.from_numpy(pre.data), mask_net, c)
    assert abs(result.extra["y_m"] - y_ref) <= REL * abs(y_ref)
    # tiles without M are skipped
    total = len(nm.sliding_window_slicers(model, nm.pad_to_patch(model, torch.from_numpy(pre.data))[0].shape[1:]))
    assert 0 < result.extra["tiles_run"] <= total == result.extra["tiles_total"]


@pytest.mark.slow
def test_exactness_identity_ensemble_and_mirroring(ensemble_folder, case):
    image, lab = case
    model = nm.load_nnunet_folder(ensemble_folder, folds=(0, 1))
    _check_identity(model, image, lab == 1, 1, use_mirroring=False)
    _check_identity(model, image, lab == 1, 1, use_mirroring=True)


def test_inplace_activations_are_read_right_and_overwritten_ones_refused(folders):
    """nnU-Net's LeakyReLU(inplace=True) overwrites the norm outputs, never a stage's output."""
    for config in CONFIGS:
        model = nm.load_nnunet_folder(folders[config])
        x = torch.randn(1, model.input_channels, *model.patch_size)
        with ActivationCapture(model.network, model.layer_names) as capture:
            with torch.no_grad():
                model.network(x)
            capture.checked_activations()  # every stage's output intact: no error
        norms = [name for name, _ in model.network.named_modules() if name.endswith(".norm")]
        # as the graph's start (a leaf), and as a later layer (found by its version counter)
        for layers, culprit in (([norms[0]], norms[0]), (["encoder.stages.0", norms[-1]], norms[-1])):
            with pytest.raises(ValueError, match=f"{culprit!r} is modified in place"):
                with ActivationCapture(model.network, layers) as capture:
                    with torch.no_grad():
                        model.network(x)
                    capture.checked_activations()
        inplace = [m.inplace for m in model.network.modules() if isinstance(m, torch.nn.LeakyReLU)]
        assert inplace and all(inplace)  # we never change the user's modules


# ------------------------------------------------------- (iii) maps on the original grid

@pytest.mark.parametrize("config", CONFIGS)
def test_maps_on_original_grid(folders, case, config):
    image, lab = case
    model = nm.load_nnunet_folder(folders[config])
    layers = [model.default_layer, _last_decoder_stage(model)]
    maps = _explain(model, image, lab == 1, 1, layers, normalize="volume").maps
    assert set(maps) == {(m, l) for m in (HIRES, GRAD) for l in layers}
    pre = nm.preprocess(model, image)
    inside = np.zeros(pre.properties["shape_before_cropping"], bool)  # transposed axes
    inside[tuple(slice(a, b) for a, b in pre.properties["bbox_used_for_cropping"])] = True
    inside = inside.transpose(model.plans_manager.transpose_backward)
    assert not inside.all()  # the crop is non-trivial for this case
    for k, v in maps.items():
        assert v.shape == lab.shape and v.dtype == np.float32
        assert np.all(v >= 0) and np.all(np.isfinite(v))
        assert np.all(v[~inside] == 0), k
    assert any(v.max() > 0 for v in maps.values())


def test_mask_and_back_mapping(folders, case):
    image, lab = case
    for config in CONFIGS:
        model = nm.load_nnunet_folder(folders[config])
        pre = nm.preprocess(model, image)
        net_shape = pre.data.shape[1:]
        assert nm.mask_to_network_frame(model, pre, np.ones(lab.shape, bool)).all()
        assert not nm.mask_to_network_frame(model, pre, np.zeros(lab.shape, bool)).any()
        m = nm.mask_to_network_frame(model, pre, lab > 0)
        assert m.shape == net_shape and 0 < m.sum() < m.size
        # a mask mapped forward and back (nearest / linear) overlaps the original well
        back = nm.network_frame_to_original(model, pre, m[None].astype(np.float32))[0] > 0.5
        inter = np.logical_and(back, lab > 0).sum()
        assert 2 * inter / (back.sum() + (lab > 0).sum()) > 0.9
        ones = nm.network_frame_to_original(model, pre, np.ones((1, *net_shape), np.float32))[0]
        bbox = pre.properties["bbox_used_for_cropping"]
        inside = np.zeros(pre.properties["shape_before_cropping"], bool)
        inside[tuple(slice(a, b) for a, b in bbox)] = True
        inside = inside.transpose(model.plans_manager.transpose_backward)
        np.testing.assert_allclose(ones[inside], 1, atol=1e-6)
        assert np.all(ones[~inside] == 0)
        with pytest.raises(ValueError):
            nm.mask_to_network_frame(model, pre, np.ones((3, 3, 3), bool))


def test_model_metadata(folders):
    m3 = nm.load_nnunet_folder(folders["3d_fullres"])
    m2 = nm.load_nnunet_folder(folders["2d"])
    assert (m3.spatial_dims, m2.spatial_dims) == (3, 2)
    assert m3.class_names == ["background", "kidney", "lesion"] and m3.input_channels == 1
    assert m3.default_layer == f"encoder.stages.{len(m3.network.encoder.stages) - 1}"
    assert m3.layer_names[0] == "encoder.stages.0" and "decoder.stages.0" in m3.layer_names
    assert m3.class_index("lesion") == 2
    with pytest.raises(ValueError):
        m3.class_index("liver")


# ------------------------------------------------------------------ (iv) bad folders

@pytest.fixture()
def folder_copy(folders, tmp_path) -> Path:
    dst = tmp_path / folders["3d_fullres"].name
    shutil.copytree(folders["3d_fullres"], dst)
    return dst


def test_error_folder_missing(tmp_path):
    with pytest.raises(nm.NnUNetLoadError, match="does not exist"):
        nm.load_nnunet_folder(tmp_path / "nope")


@pytest.mark.parametrize("fname", ["plans.json", "dataset.json"])
def test_error_json_missing(folder_copy, fname):
    (folder_copy / fname).unlink()
    with pytest.raises(nm.NnUNetLoadError, match=fname):
        nm.load_nnunet_folder(folder_copy)


def test_error_fold_missing(folder_copy):
    with pytest.raises(nm.NnUNetLoadError, match=r"fold_3 missing.*available: \['fold_all'\]"):
        nm.load_nnunet_folder(folder_copy, folds=(3,))


def test_error_checkpoint_missing(folder_copy):
    with pytest.raises(nm.NnUNetLoadError, match="checkpoint_latest.pth missing"):
        nm.load_nnunet_folder(folder_copy, checkpoint="checkpoint_latest.pth")


class Evil:
    """Stands for any pickled object; unpickling it would run code."""


def test_error_unsafe_checkpoint(folder_copy):
    p = folder_copy / "fold_all" / "checkpoint_final.pth"
    ck = torch.load(p, weights_only=False)
    ck["payload"] = Evil()
    torch.save(ck, p)
    with pytest.raises(nm.NnUNetLoadError, match="refusing to load checkpoint .*checkpoint_final.pth"):
        nm.load_nnunet_folder(folder_copy)


def test_error_shape_mismatch(folder_copy):
    p = folder_copy / "fold_all" / "checkpoint_final.pth"
    ck = torch.load(p, weights_only=False)
    k = "decoder.seg_layers.0.weight" if "decoder.seg_layers.0.weight" in ck["network_weights"] else \
        next(iter(ck["network_weights"]))
    ck["network_weights"][k] = torch.zeros(7, 7)
    torch.save(ck, p)
    with pytest.raises(nm.NnUNetLoadError, match="does not match the network built from plans.json"):
        nm.load_nnunet_folder(folder_copy)


def test_error_region_based(folder_copy):
    import json
    dj = json.loads((folder_copy / "dataset.json").read_text())
    dj["labels"] = {"background": 0, "whole": [1, 2], "lesion": 2}
    dj["regions_class_order"] = [1, 2]
    (folder_copy / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(nm.NnUNetLoadError, match="region-based"):
        nm.load_nnunet_folder(folder_copy)


def test_real_checkpoint_needs_only_numpy_scalar_globals(folders):
    """nnU-Net's own checkpoints fail plain weights_only but load with the numpy allowlist."""
    p = folders["3d_fullres"] / "fold_all" / "checkpoint_final.pth"
    with pytest.raises(Exception):
        torch.load(p, map_location="cpu", weights_only=True)
    ck = nm.load_checkpoint_safely(p)
    assert {"network_weights", "init_args", "trainer_name"} <= set(ck)
    assert isinstance(ck["_best_ema"], np.floating)


def test_orig_mod_prefix_accepted(folder_copy):
    p = folder_copy / "fold_all" / "checkpoint_final.pth"
    ck = torch.load(p, weights_only=False)
    ck["network_weights"] = {"_orig_mod." + k: v for k, v in ck["network_weights"].items()}
    torch.save(ck, p)
    nm.load_nnunet_folder(folder_copy)


# ------------------------------------------- non-trivial transpose_forward (axes permuted)

@pytest.fixture(scope="session")
def transposed_folder(folders, tmp_path_factory) -> Path:
    """3d_fullres copy whose plans say transpose_forward=[2, 0, 1] (the tiny dataset's
    planner keeps the identity, so this exercises the axis bookkeeping against nnU-Net)."""
    import json
    dst = tmp_path_factory.mktemp("tr") / folders["3d_fullres"].name
    shutil.copytree(folders["3d_fullres"], dst)
    plans = json.loads((dst / "plans.json").read_text())
    plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    (dst / "plans.json").write_text(json.dumps(plans))
    return dst


@pytest.mark.slow
def test_transposed_prediction_and_maps(transposed_folder, case, monkeypatch):
    image, lab = case
    model = nm.load_nnunet_folder(transposed_folder)
    pred = _nnunet_predictor(transposed_folder, ("all",), monkeypatch)
    arr, spacing = nm.image_to_nnunet_array(image)
    seg_ref, prob_ref = pred.predict_single_npy_array(arr, {"spacing": spacing}, None, None, True)
    seg, prob = nm.predict_nnunet(model, image)
    _assert_seg_equal_up_to_ties(seg, seg_ref, prob_ref)
    _rel_close(prob, prob_ref)
    pre = nm.preprocess(model, image)
    m = nm.mask_to_network_frame(model, pre, lab > 0)
    back = nm.network_frame_to_original(model, pre, m[None].astype(np.float32))[0] > 0.5
    inter = np.logical_and(back, lab > 0).sum()
    assert 2 * inter / (back.sum() + (lab > 0).sum()) > 0.9
    _check_identity(model, image, lab == 1, 1)
    maps = _explain(model, image, lab == 1, 1, [model.default_layer]).maps
    v = maps[(HIRES, model.default_layer)]
    assert v.shape == lab.shape and v.max() > 0


# ------------------------------------------------ the CLI and the Slicer Logic on nnU-Net folders

# A non-identity direction (axes permuted and flipped) and an origin away from 0: nnU-Net reads arrays,
# so the heatmaps must take their geometry from the CT, voxel for voxel.
TILTED = (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def _write_case(case, folder: Path) -> tuple[Path, Path]:
    import SimpleITK as sitk

    image, lab = case
    image = sitk.Image(image)
    image.SetDirection(TILTED)
    image.SetOrigin((12.5, -40.0, 101.0))
    labels = sitk.GetImageFromArray(lab.astype(np.uint8))
    labels.CopyInformation(image)
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / "ct.nii.gz"))
    sitk.WriteImage(labels, str(folder / "labels.nii.gz"))
    return folder / "ct.nii.gz", folder / "labels.nii.gz"


@pytest.mark.parametrize("config", CONFIGS)
def test_cli_explains_an_nnunet_folder_on_the_ct_grid(folders, case, tmp_path, config):
    import json

    import SimpleITK as sitk

    from seghirescam.cli import main

    ct_path, seg_path = _write_case(case, tmp_path / "case")
    out = tmp_path / "out"
    code = main(["explain", "--model", str(folders[config]), "--fold", "all", "--ct", str(ct_path), "--seg",
                 str(seg_path), "--label", "1", "--target-class", "kidney", "--layer", "encoder.stages.1", "--out", str(out),
                 "--device", "cpu"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["target_class"] == "kidney" and folders[config].name in summary["model_name"]
    ct = sitk.ReadImage(str(ct_path))
    image, lab = case
    pre = nm.preprocess(nm.load_nnunet_folder(folders[config]), image)
    inside = np.zeros(pre.properties["shape_before_cropping"], bool)
    inside[tuple(slice(a, b) for a, b in pre.properties["bbox_used_for_cropping"])] = True
    for method in (HIRES, GRAD):
        heat = sitk.ReadImage(str(out / f"kidney__M-label_1_{method}_encoder.stages.1.nrrd"))
        assert heat.GetSize() == ct.GetSize()
        assert np.allclose(heat.GetSpacing(), ct.GetSpacing()) and np.allclose(heat.GetOrigin(), ct.GetOrigin())
        assert np.allclose(heat.GetDirection(), ct.GetDirection())
        values = sitk.GetArrayFromImage(heat)
        assert values.max() == pytest.approx(1.0) and values.min() >= 0  # normalised per volume
        assert np.all(values[~inside] == 0)  # nnU-Net never sees what crop_to_nonzero cut away
    from seghirescam.imaging.volumes import axial_axis, read_volume

    axis = axial_axis(read_volume(ct_path).geometry)  # TILTED: the axial axis is not array axis 0
    others = tuple(a for a in range(3) if a != axis)
    assert summary["targets"][0]["slices_explained"] == int((lab == 1).any(axis=others).sum())


@pytest.mark.parametrize("config", CONFIGS)
def test_slicer_logic_explains_an_nnunet_folder(folders, case, tmp_path, config):
    require_module("slicer")
    import slicer
    from slicer_scene import make_headless_slicer, segmentation_from_labels, volume_from_array

    from seghirescam.imaging.geometry import Geometry
    from seghirescam.mrml import SegHiResCAMLogic

    image, lab = case
    geometry = Geometry(image.GetSpacing(), (12.5, -40.0, 101.0), TILTED)
    app = make_headless_slicer()
    array = sitk_array = np.asarray(__import__("SimpleITK").GetArrayFromImage(image), np.float32)
    ct = volume_from_array(app.scene, sitk_array, geometry.ijk_to_ras(), "CT")
    seg = segmentation_from_labels(app.scene, lab.astype(np.uint8), geometry.ijk_to_ras(), {1: "Left kidney"})
    segment_id = seg.GetSegmentation().GetNthSegmentID(0)
    logic = SegHiResCAMLogic(app.scene)
    model = logic.loadModel(str(folders[config]), folds=("all",))
    assert logic.defaultLayer(model) == model.default_layer and ("decoder.stages.0", False) in logic.layerChoices(model)
    nodes = logic.process(ct, seg, segment_id, model=model, methods=(HIRES,), device="cpu")
    node = nodes[(HIRES, model.default_layer)]
    assert node.GetAttribute("SegHiResCAM.TargetClass") == "kidney"
    expected = _explain(model.loaded, image, lab == 1, 1, [model.default_layer], methods=(HIRES,),
                        normalize="volume").maps[(HIRES, model.default_layer)]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), expected, atol=1e-6)
    matrix = __import__("vtk").vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    assert np.allclose([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], geometry.ijk_to_ras())
    assert array.shape == slicer.util.arrayFromVolume(node).shape


def test_bad_model_paths_get_one_clear_cli_error(folders, tmp_path, capsys):
    from seghirescam.cli import main

    ct_path, seg_path = _write_case(mk.make_test_case(), tmp_path / "case")
    base = ["explain", "--ct", str(ct_path), "--seg", str(seg_path), "--segment", "kidney", "--out", str(tmp_path / "o")]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(["--model", str(folders["3d_fullres"]), "--fold", "3"], "fold_3 missing"),
             (["--model", str(folders["3d_fullres"]), "--checkpoint", "checkpoint_latest.pth"], "checkpoint_latest.pth missing"),
             (["--model", str(empty)], "no model SegHiResCAM can load"),
             (["--model", str(tmp_path / "nowhere")], "model not found")]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_error_corrupt_checkpoint_and_json(folder_copy):
    checkpoint = folder_copy / "fold_all" / "checkpoint_final.pth"
    checkpoint.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(nm.NnUNetLoadError, match="cannot be read .corrupt"):
        nm.load_nnunet_folder(folder_copy)
    (folder_copy / "plans.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(nm.NnUNetLoadError, match="plans.json is not readable JSON"):
        nm.load_nnunet_folder(folder_copy)
    (folder_copy / "plans.json").unlink()
    shutil.copy(folder_copy / "dataset.json", folder_copy / "plans.json")  # valid JSON, wrong content
    with pytest.raises(nm.NnUNetLoadError, match="not an nnU-Net plans.json"):
        nm.load_nnunet_folder(folder_copy)
