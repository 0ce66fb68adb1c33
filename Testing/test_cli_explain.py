"""The demo and explain commands end to end, on the shipped model, phantoms and the real CT."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series

from seghirescam.cli import main
from seghirescam.synthetic.phantom import make_phantom
from seghirescam.imaging.volumes import Volume, write_volume


def _geometry(image: sitk.Image):
    return image.GetOrigin(), image.GetSpacing(), image.GetDirection()


def _explain(tmp_path, ct, seg, *extra, out="out"):
    code = main(["explain", "--ct", str(ct), "--seg", str(seg), "--out", str(tmp_path / out), "--device", "cpu", *extra])
    return code, tmp_path / out


def test_explain_real_ct_keeps_geometry_and_slices(tmp_path, real_ct_dir):
    code, out = _explain(tmp_path, real_ct_dir / "example_ct.nii.gz", real_ct_dir / "example_seg_fast_force_split.nii.gz",
                         "--label", "3", "--label-names", str(real_ct_dir / "total_class_map.json"))
    assert code == 0
    ct = sitk.ReadImage(str(real_ct_dir / "example_ct.nii.gz"))
    segment = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg_fast_force_split.nii.gz"))) == 3
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["target_class"] == "kidney" and summary["segment"] == "kidney_left"
    heatmaps = sorted(out.glob("kidney__M-kidney_left_*.nrrd"))  # class kidney explained over the left kidney
    assert len(heatmaps) == 2
    for path in heatmaps:
        heat_image = sitk.ReadImage(str(path))
        np.testing.assert_allclose(np.concatenate(_geometry(heat_image)), np.concatenate(_geometry(ct)), atol=1e-6)
        heat = sitk.GetArrayFromImage(heat_image)
        assert heat.shape == segment.shape and heat.max() == pytest.approx(1.0)
        # the axial axis of this CT is numpy axis 0: maps live only on slices holding the segment
        assert not heat[~segment.any(axis=(1, 2))].any()
        assert heat[segment.any(axis=(1, 2))].any()
    assert (out / "kidney__M-kidney_left_panel.png").stat().st_size > 10_000


@pytest.fixture
def phantom_files(tmp_path):
    phantom = make_phantom(3, shape=(20, 64, 64), spacing=(4.0, 4.0, 6.0), tumor=True)
    ct = Volume(phantom.ct, phantom.geometry)
    write_volume(ct, tmp_path / "ct.nii.gz")
    write_volume(Volume(phantom.labels, phantom.geometry), tmp_path / "labels.nii.gz")
    write_dicom_series(ct.to_sitk(), tmp_path / "dicom")
    (tmp_path / "names.json").write_text(json.dumps({"1": "kidney", "2": "tumor", "3": "cyst"}), encoding="utf-8")
    return tmp_path


def test_dicom_folder_gives_the_same_map_as_nifti(phantom_files):
    tmp = phantom_files
    maps = {}
    for name, ct in (("nifti", tmp / "ct.nii.gz"), ("dicom", tmp / "dicom")):
        code, out = _explain(tmp, ct, tmp / "labels.nii.gz", "--segment", "kidney", "--label-names", str(tmp / "names.json"),
                             out=f"{name}-out")
        assert code == 0
        maps[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "kidney__M-kidney_seg-hires-grad-cam_bottleneck.nrrd")))
    assert maps["nifti"].any()
    np.testing.assert_allclose(maps["dicom"], maps["nifti"], atol=1e-6)


def test_point_pixel_set_explains_one_slice(phantom_files):
    tmp = phantom_files
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "labels.nii.gz")))
    k, j, i = np.argwhere(labels == 1)[0]
    code, out = _explain(tmp, tmp / "ct.nii.gz", tmp / "labels.nii.gz", "--label", "1", "--target-class", "kidney",
                         "--pixel-set", "point", "--point", f"{i},{j},{k}", "--method", "seg-hires-grad-cam")
    assert code == 0
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"kidney__M-point_{i}_{j}_{k}_seg-hires-grad-cam_bottleneck.nrrd")))
    assert np.flatnonzero(heat.any(axis=(1, 2))).tolist() == [k]


def test_segmentation_on_another_grid_is_resampled_or_refused(phantom_files, capsys):
    tmp = phantom_files
    labels = sitk.ReadImage(str(tmp / "labels.nii.gz"))
    coarse = sitk.Resample(labels, [32, 32, 20], sitk.Transform(), sitk.sitkNearestNeighbor, labels.GetOrigin(),
                           [8.0, 8.0, 6.0], labels.GetDirection(), 0, labels.GetPixelID())
    sitk.WriteImage(coarse, str(tmp / "coarse.nii.gz"))
    code, out = _explain(tmp, tmp / "ct.nii.gz", tmp / "coarse.nii.gz", "--label", "1", "--target-class", "kidney",
                         out="coarse")
    assert code == 0 and (out / "kidney__M-label_1_seg-grad-cam_bottleneck.nrrd").exists()
    labels.SetOrigin([o + 2000.0 for o in labels.GetOrigin()])
    sitk.WriteImage(labels, str(tmp / "far.nii.gz"))
    code, _ = _explain(tmp, tmp / "ct.nii.gz", tmp / "far.nii.gz", "--label", "1", out="far")
    assert code == 2 and "do not overlap" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--segment", "spleen"], "no label is named 'spleen'"),
    (["--label", "3"], "is empty"),
    (["--label", "1", "--target-class", "1", "--pixel-set", "point"], "needs --point"),
])
def test_bad_requests_are_named(phantom_files, capsys, args, message):
    tmp = phantom_files
    code, _ = _explain(tmp, tmp / "ct.nii.gz", tmp / "labels.nii.gz", *args)
    assert code == 2 and message in capsys.readouterr().err


def test_demo_writes_maps_panels_and_summary(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert [t["explained_class"] for t in summary["targets"]] == ["kidney", "tumor"]
    assert [t["target"] for t in summary["targets"]] == ["kidney__M-prediction", "tumor__M-prediction"]
    ct = sitk.ReadImage(str(tmp_path / "ct.nrrd"))
    for target in summary["targets"]:
        assert target["slices_explained"] > 0
        assert set(target["map_statistics"]) == {f"{m}@{layer}" for m in ("seg-hires-grad-cam", "seg-grad-cam")
                                                 for layer in ("bottleneck", "dec2")}
        for name, path in target["files"].items():
            if name == "panel":
                assert path.endswith(".png")
                continue
            image = sitk.ReadImage(path)
            np.testing.assert_allclose(np.concatenate(_geometry(image)), np.concatenate(_geometry(ct)))
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "prediction.nrrd")))
    assert set(np.unique(prediction)) >= {0, 1}


def test_new_methods_run_from_the_command_line_on_the_real_ct_with_a_cost_estimate(tmp_path, real_ct_dir):
    """``python -m seghirescam.cli explain`` with a perturbation and a gradient method (one slice: a point's disc)."""
    seg_path = real_ct_dir / "example_seg_fast_force_split.nii.gz"
    segment = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path))) == 3
    voxels = np.argwhere(segment)
    k, j, i = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "SegHiResCAM")}
    done = subprocess.run([sys.executable, "-m", "seghirescam.cli", "explain", "--ct", str(real_ct_dir / "example_ct.nii.gz"),
                           "--seg", str(seg_path), "--label", "3", "--label-names", str(real_ct_dir / "total_class_map.json"),
                           "--pixel-set", "point", "--point", f"{i},{j},{k}", "--method", "seg-score-cam",
                           "--method", "seg-grad-cam-pp", "--device", "cpu", "--out", str(tmp_path / "out")],
                          capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"seg-score-cam: \d+ extra forward passes \(one per channel of bottleneck, on 1 slices", done.stderr)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["targets"][0]["slices_explained"] == 1
    for method in ("seg-score-cam", "seg-grad-cam-pp"):
        (path,) = (tmp_path / "out").glob(f"kidney_left_{method}_*.nrrd")
        heat = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert heat.shape == segment.shape and heat.max() == pytest.approx(1.0)
        assert np.flatnonzero(heat.any(axis=(1, 2))).tolist() == [k]
