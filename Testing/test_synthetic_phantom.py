"""Tests of seghirescam.synthetic.phantom: procedural KiTS23-style abdominal CT volumes with kidney labels."""

from __future__ import annotations

import numpy as np
import pytest

from seghirescam.imaging.geometry import Geometry
from seghirescam.synthetic.phantom import LABELS, Phantom, make_phantom

KIDNEY, TUMOR, CYST = LABELS["kidney"], LABELS["tumor"], LABELS["cyst"]
RIGHT, LEFT = 1, 2  # codes in Phantom.sides (the patient's right and left kidneys)
SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def phantoms() -> dict[int, Phantom]:
    """Default-shaped phantoms with a tumour and a cyst, for several seeds."""
    return {seed: make_phantom(seed, cyst=True) for seed in SEEDS}


def _lps(p: Phantom, mask: np.ndarray) -> np.ndarray:
    """LPS positions (mm, rows x y z) of the voxels in a (k, j, i) mask."""
    k, j, i = np.nonzero(mask)
    return (p.geometry.ijk_to_lps() @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[:3].T


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One-voxel 6-neighbourhood dilation."""
    out = mask.copy()
    for ax in range(3):
        v, m = np.moveaxis(out, ax, 0), np.moveaxis(mask, ax, 0)
        v[1:] |= m[:-1]
        v[:-1] |= m[1:]
    return out


def test_same_arguments_give_identical_arrays_and_seeds_differ():
    a, b, c = make_phantom(7, cyst=True), make_phantom(7, cyst=True), make_phantom(8, cyst=True)
    for name in ("ct", "labels", "sides", "body"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.geometry == b.geometry
    assert not np.array_equal(a.ct, c.ct)
    assert not np.array_equal(a.labels, c.labels)


def test_dtypes_shapes_and_geometry():
    p = make_phantom(0, shape=(20, 96, 80), spacing=(3.0, 2.0, 4.0))
    assert p.ct.dtype == np.int16 and p.labels.dtype == np.uint8 and p.sides.dtype == np.uint8
    assert p.body.dtype == bool
    assert p.ct.shape == p.labels.shape == p.sides.shape == p.body.shape == (20, 96, 80)
    assert isinstance(p.geometry, Geometry)
    assert p.geometry.spacing == (3.0, 2.0, 4.0)
    assert p.geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(p.geometry.origin, (-79 * 3.0 / 2, -95 * 2.0 / 2, -19 * 4.0 / 2))
    centre = p.geometry.ijk_to_lps() @ np.array([79 / 2, 95 / 2, 19 / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    assert p.ct.min() >= -1024 and p.ct.max() <= 3071
    assert LABELS == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}


@pytest.mark.parametrize("tumor", [False, True])
@pytest.mark.parametrize("cyst", [False, True])
def test_each_class_present_exactly_when_asked(tumor, cyst):
    for seed in (1, 2):
        p = make_phantom(seed, tumor=tumor, cyst=cyst)
        expected = {0, KIDNEY} | ({TUMOR} if tumor else set()) | ({CYST} if cyst else set())
        assert set(np.unique(p.labels).tolist()) == expected


def test_kidneys_sit_beside_the_spine_in_the_posterior_body(phantoms):
    for p in phantoms.values():
        n_i = p.ct.shape[2]
        np.testing.assert_array_equal(p.sides > 0, p.labels > 0)
        assert not (p.labels > 0)[~p.body].any(), "labels outside the body"
        right, left = (p.labels == KIDNEY) & (p.sides == RIGHT), (p.labels == KIDNEY) & (p.sides == LEFT)
        assert right.sum() > 1000 and left.sum() > 1000
        # patient's right is image left (small i): column i grows to the patient's left
        assert np.nonzero(right)[2].max() < n_i / 2 < np.nonzero(left)[2].min()
        for kidney in (right, left):
            x, y, _ = _lps(p, kidney).mean(axis=0)
            assert 45 < abs(x) < 100, "kidney centre 4.5..10 cm from the midline"
            assert y > 0, "kidney in the posterior half"
        slices = (p.labels == KIDNEY).any(axis=(1, 2))
        assert not slices[:3].any() and not slices[-3:].any(), "kidneys span a sub-range of slices"


def test_right_kidney_lies_lower_than_left():
    for seed in SEEDS:
        p = make_phantom(seed, tumor=False)
        z_right = _lps(p, p.sides == RIGHT)[:, 2].mean()
        z_left = _lps(p, p.sides == LEFT)[:, 2].mean()
        assert z_right < z_left


def test_hounsfield_units_are_plausible(phantoms):
    for p in phantoms.values():
        assert 120 <= p.ct[p.labels == KIDNEY].mean() <= 220
        assert 60 <= p.ct[p.labels == TUMOR].mean() <= 160
        assert -10 <= p.ct[p.labels == CYST].mean() <= 25
        assert p.ct[~p.body].mean() < -950
        assert -1024 <= p.ct[:, :4, :4].mean() <= -980, "air in the corners"
        body_hu = p.ct[p.body]
        assert -150 < np.median(body_hu) < 100
        n_k, n_j, n_i = p.ct.shape
        midline_back = p.ct[:, n_j // 2:, n_i // 2 - 1: n_i // 2 + 2]
        assert (midline_back.max(axis=(1, 2)) > 300).all(), "bright spine in every slice, posterior midline"
        midline_front = p.ct[:, : n_j // 2 - 12, n_i // 2 - 1: n_i // 2 + 2]
        assert midline_front.max() < midline_back.max()


def test_noise_level_follows_noise_hu():
    quiet, noisy = make_phantom(0, noise_hu=0.0), make_phantom(0, noise_hu=30.0)
    air = (slice(None), slice(0, 6), slice(0, 6))
    assert (quiet.ct[air] == -1000).all()
    tissue = quiet.body & (np.abs(quiet.ct.astype(float) - 45) < 400)
    diff = noisy.ct[tissue].astype(float) - quiet.ct[tissue]
    assert 25 < diff.std() < 35
    np.testing.assert_array_equal(quiet.labels, noisy.labels)


def test_tumour_touches_a_kidney_on_the_requested_side(phantoms):
    for p in phantoms.values():
        tumour, kidney = p.labels == TUMOR, p.labels == KIDNEY
        assert (_dilate(tumour) & kidney).any(), "tumour touches kidney parenchyma"
        side = np.unique(p.sides[tumour])
        assert side.size == 1 and (_dilate(tumour) & kidney & (p.sides == side[0])).any()
        cyst = p.labels == CYST
        assert (_dilate(cyst) & kidney).any(), "cyst sits in a kidney"
        assert np.unique(p.sides[cyst]).tolist() == [3 - side[0]], "cyst in the other kidney"
    for name, code in (("right", RIGHT), ("left", LEFT)):
        p = make_phantom(5, tumor_side=name)
        assert np.unique(p.sides[p.labels == TUMOR]).tolist() == [code]
        x = _lps(p, p.labels == TUMOR)[:, 0].mean()
        assert x < 0 if name == "right" else x > 0, "LPS: the patient's right is -x"


def test_same_seed_same_anatomy_at_other_sizes_and_anisotropic_spacing():
    coarse = make_phantom(4, shape=(24, 64, 72), spacing=(5.0, 4.5, 10.0), tumor_side="left", cyst=True)
    fine = make_phantom(4, shape=(40, 512, 512), spacing=(0.7, 0.6, 6.0), tumor_side="left", cyst=True)
    default = make_phantom(4, tumor_side="left", cyst=True)
    for p in (coarse, fine):
        assert set(np.unique(p.labels).tolist()) == {0, KIDNEY, TUMOR, CYST}
    volume = {id(p): (p.labels == KIDNEY).sum() * np.prod(p.geometry.spacing) for p in (coarse, fine, default)}
    ref = volume[id(default)]
    assert 100e3 < ref < 500e3, "two kidneys of about 11 x 6 x 4 cm"
    for p in (coarse, fine):
        assert abs(volume[id(p)] / ref - 1) < 0.25
        for code in (RIGHT, LEFT):
            mask = (p.labels == KIDNEY) & (p.sides == code)
            ref_mask = (default.labels == KIDNEY) & (default.sides == code)
            np.testing.assert_allclose(_lps(p, mask).mean(axis=0), _lps(default, ref_mask).mean(axis=0), atol=8.0)


def test_small_field_of_view_just_crops():
    p = make_phantom(0, shape=(8, 64, 64), spacing=(1.0, 1.0, 1.0))
    assert p.body.all() and p.ct.shape == (8, 64, 64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(48, 128)), "shape must be 3 integers"),
        (dict(shape=(48.0, 128, 128)), "shape must be 3 integers"),
        (dict(shape=128), "shape must be 3 integers"),
        (dict(shape=(4, 128, 128)), ">= 8 slices"),
        (dict(shape=(48, 32, 128)), "64..512"),
        (dict(shape=(48, 128, 1024)), "64..512"),
        (dict(spacing=(0.0, 2.5, 5.0)), "spacing must be 3 positive"),
        (dict(spacing=(2.5, -1.0, 5.0)), "spacing must be 3 positive"),
        (dict(spacing=(2.5, 2.5)), "spacing must be 3 positive"),
        (dict(spacing=(2.5, float("nan"), 5.0)), "spacing must be 3 positive"),
        (dict(tumor_side="middle"), "tumor_side must be one of"),
        (dict(noise_hu=-1.0), "noise_hu"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(seed=1.5), "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        make_phantom(kwargs.pop("seed"), **kwargs)
