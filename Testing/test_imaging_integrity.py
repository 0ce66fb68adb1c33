"""Corrupt and suspicious images are refused before any work (seghirescam.imaging.integrity, .dicom_series).

Each file is made from a tiny volume written by SimpleITK, then damaged as a disk or a transfer would
damage it. Without the checks SimpleITK reads a truncated NIfTI with zeros in place of the missing
voxels, turns NaN/Inf of a float NIfTI into 0, and stacks a DICOM series with a missing slice at one
stretched spacing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_series import write_dicom_series

from seghirescam.imaging.dicom_series import IrregularSlicesError
from seghirescam.imaging.geometry import Geometry
from seghirescam.imaging.integrity import CorruptImageError, check_image_file
from seghirescam.imaging.volumes import Volume, read_volume, write_volume

SHAPE_KJI = (6, 7, 8)


def _ct(dtype=np.int16) -> Volume:
    array = np.random.default_rng(0).integers(-900, 900, size=SHAPE_KJI).astype(dtype)
    return Volume(array, Geometry((0.8, 0.9, 2.5), (1.0, -2.0, 30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))


def _damaged(tmp_path: Path, name: str, damage) -> Path:
    good = write_volume(_ct(), tmp_path / f"good{name}", compress=name.endswith((".gz", ".nrrd")))
    data = bytearray(good.read_bytes())
    bad = tmp_path / f"bad{name}"
    bad.write_bytes(bytes(damage(data)))
    return bad


def _truncate(data: bytearray) -> bytearray:
    return data[: len(data) * 2 // 3]


def _flip_late_byte(data: bytearray) -> bytearray:
    data[len(data) * 3 // 4] ^= 0x10  # inside the compressed voxel data, past the header
    return data


@pytest.mark.parametrize("name, damage, reason", [
    (".nii.gz", _truncate, "corrupt"),
    (".nii", _truncate, "truncated"),
    (".nii.gz", _flip_late_byte, "CRC check failed|invalid"),
    (".nrrd", _truncate, "corrupt"),
])
def test_damaged_file_is_refused_naming_the_file(tmp_path, name, damage, reason):
    bad = _damaged(tmp_path, name, damage)
    before = bad.read_bytes()
    with pytest.raises(CorruptImageError, match=reason) as caught:
        read_volume(bad)
    assert str(bad) in str(caught.value)
    assert bad.read_bytes() == before  # inputs are never modified


def test_truncated_nifti_reports_how_much_is_missing(tmp_path):
    bad = _damaged(tmp_path, ".nii", lambda data: data[:-100])
    expected = int(np.prod(SHAPE_KJI)) * 2
    with pytest.raises(CorruptImageError, match=f"holds {expected - 100} of the {expected} bytes"):
        check_image_file(bad)


@pytest.mark.parametrize("name", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_whole_files_read_as_written(tmp_path, name):
    ct = _ct()
    read = read_volume(write_volume(ct, tmp_path / f"ct{name}"))
    np.testing.assert_array_equal(read.array, ct.array)


@pytest.mark.parametrize("name", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_float_file_with_nan_or_inf_is_refused(tmp_path, name, value):
    ct = _ct(np.float32)
    ct.array[2, 3, 4] = value
    path = write_volume(ct, tmp_path / f"ct{name}")
    with pytest.raises(CorruptImageError, match=r"holds 1 NaN or infinite voxel value\(s\) \(float32") as caught:
        read_volume(path)
    assert str(path) in str(caught.value)


def test_finite_float64_nifti_reads(tmp_path):
    ct = _ct(np.float64)
    np.testing.assert_array_equal(read_volume(write_volume(ct, tmp_path / "ct.nii.gz")).array, ct.array)


def _dicom_folder(tmp_path: Path, drop: int | None) -> tuple[Path, np.ndarray]:
    array = np.random.default_rng(1).integers(-500, 500, size=(7, 6, 5)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 2.0))
    image.SetOrigin((10.0, 20.0, -30.0))
    folder = tmp_path / "dicom"
    write_dicom_series(image, folder)
    if drop is not None:
        (folder / f"{drop:03d}.dcm").unlink()
    return folder, array


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path, capfd):
    folder, _ = _dicom_folder(tmp_path, drop=3)
    with pytest.raises(IrregularSlicesError, match="not evenly spaced: gaps from 2 to 4 mm.*missing slice"
                       ".*--allow-irregular-slices") as caught:
        read_volume(folder)
    assert str(folder) in str(caught.value)
    assert "Non uniform sampling" not in capfd.readouterr().err  # ITK's own line, replaced by the message above


def test_allowed_irregular_series_is_resampled_onto_the_original_grid(tmp_path, caplog):
    folder, array = _dicom_folder(tmp_path, drop=3)
    with caplog.at_level(logging.WARNING):
        volume = read_volume(folder, allow_irregular_slices=True)
    assert "resampled" in caplog.text and "7 slices 2 mm apart" in caplog.text
    assert volume.array.shape == array.shape
    np.testing.assert_allclose(volume.geometry.spacing, (0.7, 0.7, 2.0), atol=1e-4)
    np.testing.assert_allclose(volume.geometry.origin, (10.0, 20.0, -30.0), atol=1e-4)
    kept = [0, 1, 2, 4, 5, 6]
    np.testing.assert_allclose(volume.array[kept], array[kept], atol=1e-3)
    np.testing.assert_allclose(volume.array[3], (array[2].astype(float) + array[4]) / 2, atol=1e-3)


def test_regular_dicom_series_is_read_unchanged(tmp_path):
    folder, array = _dicom_folder(tmp_path, drop=None)
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.geometry.spacing, (0.7, 0.7, 2.0), atol=1e-4)


def test_dicom_series_with_two_slices_at_one_position_is_refused_even_when_irregular_is_allowed(tmp_path):
    folder, _ = _dicom_folder(tmp_path, drop=None)
    moved = sitk.ReadImage(str(folder / "004.dcm"))
    moved.SetMetaData("0020|0032", sitk.ReadImage(str(folder / "003.dcm")).GetMetaData("0020|0032"))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "004.dcm"))
    writer.Execute(moved)
    with pytest.raises(IrregularSlicesError, match="at the same position"):
        read_volume(folder, allow_irregular_slices=True)


def test_batch_records_corrupt_and_irregular_inputs_as_failed_with_the_reason(tmp_path):
    from test_cohort_runner import record, tiny_model, write_case, write_manifest

    from seghirescam.cohort.runner import BatchSettings, run_batch

    data = tmp_path / "data"
    data.mkdir()
    ct, seg = write_case(data, "good", 1)
    (data / "truncated.nii.gz").write_bytes((data / ct).read_bytes()[:-50])
    folder, _ = _dicom_folder(data, drop=3)
    rows = [{"case_id": "truncated", "ct": "truncated.nii.gz", "seg": seg, "segment": "1"},
            {"case_id": "gap", "ct": folder.name, "seg": seg, "segment": "1"}]
    out = tmp_path / "out"
    report = run_batch(write_manifest(data, rows), out, BatchSettings(model=str(tiny_model(data)), figure=False),
                       progress=False)
    assert report.exit_code == 1
    expected = {"truncated": ("CorruptImageError", "truncated.nii.gz is corrupt"),
                "gap": ("IrregularSlicesError", "not evenly spaced")}
    for case_id, (kind, words) in expected.items():
        failed = record(out, case_id)
        assert failed["status"] == "failed" and failed["error"]["type"] == kind and words in failed["error"]["message"]


def test_explain_refuses_a_gap_and_with_the_option_explains_on_the_uniform_grid(tmp_path, capsys):
    from test_cohort_runner import tiny_model

    from seghirescam.cli import main

    array = np.full((7, 32, 32), -100, np.int16)
    array[:, 8:20, 10:22] = 40
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 4.0))
    write_dicom_series(image, tmp_path / "dicom")
    (tmp_path / "dicom" / "002.dcm").unlink()
    labels = Volume((array > 0).astype(np.uint8), Geometry((2.0, 2.0, 4.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    argv = ["explain", "--ct", str(tmp_path / "dicom"), "--seg", str(write_volume(labels, tmp_path / "seg.nii.gz")),
            "--label", "1", "--target-class", "kidney", "--model", str(tiny_model(tmp_path)), "--device", "cpu",
            "--method", "seg-hires-grad-cam"]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    assert "--allow-irregular-slices" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "out"), "--allow-irregular-slices"]) == 0
    heatmaps = [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".nrrd")]
    assert heatmaps and all(read_volume(p).array.shape == array.shape for p in heatmaps)
