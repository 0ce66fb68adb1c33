"""Tests of seghirescam.imaging.volumes: file I/O, geometry, axial reorientation and label resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require_real_ct
import SimpleITK as sitk

from dicom_series import write_dicom_series

from seghirescam.imaging.geometry import Geometry
from seghirescam.imaging.volumes import (
    SliceOrientation,
    Volume,
    axial_axis,
    physical_bounds,
    read_volume,
    resample_labels_onto,
    same_grid,
    write_volume,
)


IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
# KiTS23 NIfTI: i -> Inferior, j -> Posterior, k -> Left (IPL): the axial axis is FIRST in file order.
KITS_IPL = (0, 0, 1, 0, 1, 0, -1, 0, 0)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


ROTATED_IPL = tuple((_rotation(2, 10) @ np.reshape(KITS_IPL, (3, 3))).ravel())
DIRECTIONS = {
    "identity": IDENTITY,
    "kits_ipl": KITS_IPL,
    "ras_flips": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "coronal_perm": (0, 1, 0, 0, 0, -1, 1, 0, 0),  # i -> P, j -> L, k -> I (left-handed)
    "sagittal": (0, 0, -1, 1, 0, 0, 0, -1, 0),
    "rot10_x": tuple(_rotation(0, 10).ravel()),
    "rot10_ipl": ROTATED_IPL,
}


def _volume(direction=ROTATED_IPL, shape=(5, 6, 7), dtype=np.int16, seed=0) -> Volume:
    array = np.random.default_rng(seed).integers(-1000, 1000, size=shape).astype(dtype)
    return Volume(array, Geometry((0.7, 0.8, 3.0), (12.5, -30.25, 101.0), direction))


def _assert_same_geometry(a: Geometry, b: Geometry, atol: float = 1e-5) -> None:
    assert same_grid(a, b, atol=atol), (a, b)


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "ct.mha"])
def test_round_trip_preserves_array_and_geometry(tmp_path, name):
    volume = _volume()
    written = write_volume(volume, tmp_path / "sub" / name)
    assert written == tmp_path / "sub" / name
    back = read_volume(written)
    assert back.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(back.array, volume.array)
    _assert_same_geometry(back.geometry, volume.geometry)
    assert [p.name for p in written.parent.iterdir()] == [name]


def test_ras_of_index_matches_simpleitk():
    volume = _volume()
    image = volume.to_sitk()
    for ijk in [(0, 0, 0), (3, 2, 1), (6, 5, 4)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(volume.geometry.ras_of_index(ijk), lps * [-1, -1, 1], atol=1e-9)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def failing_write(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(OSError, match="could not write"):
        write_volume(_volume(), tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_write_onto_a_folder_fails_without_leftovers(tmp_path):
    (tmp_path / "out.mha").mkdir()
    with pytest.raises(OSError):
        write_volume(_volume(), tmp_path / "out.mha")
    assert [p.name for p in tmp_path.iterdir()] == ["out.mha"]
    assert list((tmp_path / "out.mha").iterdir()) == []


def test_read_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.nii.gz"):
        read_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no DICOM"):
        read_volume(tmp_path / "empty")
    sitk.WriteImage(sitk.Image([4, 5], sitk.sitkInt16), str(tmp_path / "flat.mha"))
    with pytest.raises(ValueError, match="flat.mha.*3D"):
        read_volume(tmp_path / "flat.mha")
    sitk.WriteImage(sitk.Image([4, 5, 3], sitk.sitkVectorFloat32, 3), str(tmp_path / "vec.mha"))
    with pytest.raises(ValueError, match="vec.mha.*scalar"):
        read_volume(tmp_path / "vec.mha")


def test_dicom_folder_reads_like_nifti(tmp_path):
    # DICOM derives the slice normal as row x column, so use a right-handed direction.
    volume = _volume(direction=KITS_IPL, shape=(4, 5, 6))
    write_dicom_series(volume.to_sitk(), tmp_path / "dicom")
    nifti = read_volume(write_volume(volume, tmp_path / "ct.nii.gz"))
    dicom = read_volume(tmp_path / "dicom")
    np.testing.assert_array_equal(dicom.array, nifti.array)
    np.testing.assert_array_equal(dicom.array, volume.array)
    _assert_same_geometry(dicom.geometry, nifti.geometry, atol=1e-3)


def test_axial_axis():
    assert axial_axis(Geometry(direction=IDENTITY)) == 0
    assert axial_axis(Geometry(direction=KITS_IPL)) == 2
    assert axial_axis(Geometry(direction=ROTATED_IPL)) == 2
    assert axial_axis(Geometry(direction=DIRECTIONS["coronal_perm"])) == 2
    assert axial_axis(Geometry(direction=DIRECTIONS["sagittal"])) == 1
    tie = _rotation(0, 45)  # j and k both 45 degrees from S-I
    with pytest.raises(ValueError, match="S-I"):
        axial_axis(Geometry(direction=tuple(tie.ravel())))


def _lps_of_voxels(geometry: Geometry, shape_kji) -> np.ndarray:
    """(3, k, j, i) LPS coordinates of every voxel centre."""
    k, j, i = np.indices(shape_kji, dtype=float)
    ijk1 = np.stack([i, j, k, np.ones_like(i)]).reshape(4, -1)
    return (geometry.ijk_to_lps() @ ijk1)[:3].reshape(3, *shape_kji)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_slice_orientation_points_superior_posterior_left(name):
    geometry = Geometry((0.7, 0.8, 3.0), (5.0, -7.0, 11.0), DIRECTIONS[name])
    shape = (4, 5, 6)
    lps = _lps_of_voxels(geometry, shape)
    orientation = SliceOrientation.from_geometry(geometry)
    x, y, z = (orientation.to_slices(lps[n]) for n in range(3))
    assert np.all(np.diff(z, axis=0) > 0), "s must run inferior -> superior"
    assert np.all(np.diff(y, axis=1) > 0), "r must run anterior -> posterior"
    assert np.all(np.diff(x, axis=2) > 0), "c must run patient right -> left"
    # each step along s/r/c moves about one spacing along its patient axis
    steps = [np.diff(z, axis=0).mean(), np.diff(y, axis=1).mean(), np.diff(x, axis=2).mean()]
    spacing = orientation.slice_spacing(geometry)
    np.testing.assert_allclose(steps, spacing, rtol=0.02)
    assert orientation.to_slices(lps[0]).shape == tuple(
        shape[n] for n in orientation.permutation)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_slice_orientation_round_trip_is_exact(name):
    orientation = SliceOrientation.from_geometry(Geometry(direction=DIRECTIONS[name]))
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    slices = orientation.to_slices(array)
    assert np.shares_memory(slices, array)
    back = orientation.from_slices(slices)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(orientation.from_slices(np.ascontiguousarray(slices)), array)


def test_slice_orientation_known_cases():
    assert SliceOrientation.from_geometry(Geometry()) == SliceOrientation((0, 1, 2), (False, False, False))
    kits = SliceOrientation.from_geometry(Geometry((0.8, 0.8, 3.0), direction=KITS_IPL))
    assert kits == SliceOrientation((2, 1, 0), (True, False, False))
    assert kits.slice_spacing(Geometry((3.0, 0.8, 0.7), direction=KITS_IPL)) == (3.0, 0.8, 0.7)
    with pytest.raises(ValueError, match="same patient axis"):
        SliceOrientation.from_geometry(Geometry(direction=tuple(_rotation(2, 45).ravel())))
    doubly_oblique = _rotation(0, 40) @ _rotation(1, 40)  # i and k both nearest to patient L-R
    with pytest.raises(ValueError, match="same patient axis"):
        SliceOrientation.from_geometry(Geometry(direction=tuple(doubly_oblique.ravel())))
    # 50 degrees about S-I is still unambiguous: i -> P, j -> R
    assert SliceOrientation.from_geometry(Geometry(direction=tuple(_rotation(2, 50).ravel()))) == (
        SliceOrientation((0, 2, 1), (False, False, True)))


def test_resample_identical_grid_is_an_exact_copy():
    labels = _volume(dtype=np.uint8)
    out = resample_labels_onto(labels, labels.geometry, labels.array.shape)
    assert out.dtype == np.uint8 and not np.shares_memory(out, labels.array)
    np.testing.assert_array_equal(out, labels.array)


@pytest.mark.parametrize("label_direction", [IDENTITY, (-1, 0, 0, 0, 1, 0, 0, 0, -1)])
def test_resample_coarse_labels_land_in_place(label_direction):
    reference = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    direction = np.reshape(label_direction, (3, 3))
    # a 4x4x4 grid of 2 mm voxels covering the same box (-0.5 .. 7.5 mm) as the 8x8x8 reference
    first_centre = np.where(np.diag(direction) > 0, 0.5, 6.5)
    coarse = np.zeros((4, 4, 4), dtype=np.uint8)
    coarse[1, 2, 3] = 5
    labels = Volume(coarse, Geometry((2.0, 2.0, 2.0), tuple(first_centre), label_direction))
    lo, hi = physical_bounds(labels.geometry, coarse.shape)
    np.testing.assert_allclose(lo, -0.5)
    np.testing.assert_allclose(hi, 7.5)
    out = resample_labels_onto(labels, reference, (8, 8, 8))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 8)
    # coarse voxel (i, j, k) = (3, 2, 1) has its centre at LPS first_centre + diag * (6, 4, 2)
    centre = first_centre + np.diag(direction) * np.array([6.0, 4.0, 2.0])
    expected = np.zeros((8, 8, 8), dtype=np.uint8)
    x0, y0, z0 = (int(c - 0.5) for c in centre)
    expected[z0:z0 + 2, y0:y0 + 2, x0:x0 + 2] = 5
    np.testing.assert_array_equal(out, expected)


def test_resample_non_overlapping_grids_raise():
    labels = _volume(direction=IDENTITY, dtype=np.uint8)
    shifted = Geometry(labels.geometry.spacing, (500.0, 0.0, 0.0), IDENTITY)
    with pytest.raises(ValueError, match="overlap"):
        resample_labels_onto(labels, shifted, labels.array.shape)


def _data(name: str) -> Path:
    return require_real_ct(name)


def test_real_ct_axial_axis_and_kidney_sides():
    ct = read_volume(_data("example_ct.nii.gz"))
    seg = read_volume(_data("example_seg_fast_force_split.nii.gz"))
    assert axial_axis(ct.geometry) == 0
    labels = resample_labels_onto(seg, ct.geometry, ct.array.shape)
    np.testing.assert_array_equal(labels, seg.array)  # same grid: a plain copy
    orientation = SliceOrientation.from_geometry(ct.geometry)
    slices = orientation.to_slices(labels)
    width = slices.shape[2]
    right_c = np.nonzero(slices == 2)[2].mean()
    left_c = np.nonzero(slices == 3)[2].mean()
    assert right_c < width / 2 < left_c, (right_c, left_c)
    # s runs inferior -> superior: the liver (5) sits above the kidneys (2, 3)
    assert np.nonzero(slices == 5)[0].mean() > np.nonzero(np.isin(slices, (2, 3)))[0].mean()


def test_real_shifted_labels_land_where_the_header_says():
    ct = read_volume(_data("example_ct.nii.gz"))
    full_seg = read_volume(_data("example_seg_fast_force_split.nii.gz"))
    small_seg = read_volume(_data("example_seg.nii.gz"))
    # the header of the 30-slice crop still holds the full volume's origin: it overlays slices 0..29
    out = resample_labels_onto(small_seg, ct.geometry, ct.array.shape)
    np.testing.assert_array_equal(out[:30], small_seg.array)
    assert not out[30:].any()
    assert not np.isin(full_seg.array[:30], (2, 3)).any() and np.isin(out[:30], (2, 3)).any()
    # corrected by the 82 slices (246 mm superior) it was cut from, the kidneys line up
    geometry = small_seg.geometry
    origin = np.add(geometry.origin, geometry.direction_matrix[:, 2] * 82 * geometry.spacing[2])
    fixed = Volume(small_seg.array, Geometry(geometry.spacing, tuple(origin), geometry.direction))
    out = resample_labels_onto(fixed, ct.geometry, ct.array.shape)
    np.testing.assert_array_equal(out[82:], small_seg.array)
    for label in (2, 3):
        a, b = out[82:] == label, full_seg.array[82:] == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8
