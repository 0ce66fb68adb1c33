"""Deletion/insertion curves and localisation on constructed cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet
from torch import nn

from seghirescam.evaluation.faithfulness import (Curves, blur_fill, curve_auc, inference_copy, normalize_curves,
                                      perturbation_curves, rank_positions, score_slices, tissue_mean_fill,
                                      uniform_fractions)
from seghirescam.evaluation.localisation import dilate, localisation_metrics


class LinearModel(nn.Module):
    """logits[1] = x, logits[0] = 0: y_M is the sum of the input over M, linear in the pixels kept."""

    def __init__(self, bias: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
            self.head.bias.copy_(torch.tensor([0.0, bias]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _box(shape=(64, 64), rows=slice(20, 40), cols=slice(22, 42)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


# ---- localisation -------------------------------------------------------------------------------------------

def test_a_map_equal_to_m_gets_the_best_pointing_and_mass_share():
    m, other = _box(), _box(rows=slice(5, 12), cols=slice(5, 12))
    body = dilate(m | other, 6)
    scores = localisation_metrics(m.astype(float), m, dilation=3, other=other, body=body)
    assert scores["pointing"] == scores["pointing_dilated"] == 1.0
    assert scores["mass_in_m"] == scores["mass_in_m_dilated"] == 1.0
    assert scores["mass_other"] == 0.0 and scores["mass_outside_body"] == 0.0 and scores["zero_map"] == 0.0


def test_localisation_of_a_map_beside_m_and_of_uninformative_maps():
    m = _box()
    beside = np.roll(m, 30, axis=1).astype(float)  # all mass outside M
    scores = localisation_metrics(beside, m, dilation=3)
    assert scores["mass_in_m"] == 0.0 and scores["pointing"] == 0.0 and np.isnan(scores["mass_other"])
    constant = localisation_metrics(np.ones(m.shape), m)  # every pixel is a maximum: a constant map misses
    assert constant["pointing"] == 0.0 and constant["mass_in_m"] == pytest.approx(m.mean())
    zero = localisation_metrics(np.zeros(m.shape), m)
    assert zero["zero_map"] == 1.0 and zero["pointing"] == 0.0 and np.isnan(zero["mass_in_m"])


def test_dilated_share_counts_a_ring_of_the_given_radius():
    m = np.zeros((21, 21), bool)
    m[10, 10] = True
    ring = dilate(m, 3) & ~m
    assert ring.sum() == 28  # the disk of radius 3 holds 29 pixels
    scores = localisation_metrics(ring.astype(float), m, dilation=3)
    assert scores["mass_in_m"] == 0.0 and scores["mass_in_m_dilated"] == 1.0


# ---- ranking ------------------------------------------------------------------------------------------------

def test_ties_are_broken_at_random_with_a_fixed_seed():
    constant = np.zeros((16, 16))
    first = rank_positions(constant, np.random.default_rng(5))
    assert np.array_equal(first, rank_positions(constant, np.random.default_rng(5)))
    assert not np.array_equal(first, rank_positions(constant, np.random.default_rng(6)))
    assert sorted(first.ravel().tolist()) == list(range(256))
    assert not np.array_equal(first.ravel(), np.arange(256))  # not the raster order


def test_ranking_follows_the_values_and_ties_only_reorder_equals():
    saliency = np.array([[0.1, 0.9], [0.5, 0.5]])
    for seed in range(5):
        positions = rank_positions(saliency, np.random.default_rng(seed))
        assert positions[0, 1] == 0 and positions[0, 0] == 3
        assert {positions[1, 0], positions[1, 1]} == {1, 2}
    with pytest.raises(ValueError, match="NaN"):
        rank_positions(np.array([[np.nan, 1.0]]), np.random.default_rng(0))


# ---- fills and scores ---------------------------------------------------------------------------------------

def test_fills_remove_information():
    x = torch.from_numpy(np.indices((32, 32)).sum(0) % 2 * 2.0 - 1)[None, None].float()  # checkerboard +-1
    assert blur_fill(x, 4.0)[..., 8:-8, 8:-8].std() < 0.01 * x.std()  # away from the repeated edges
    tissue = np.zeros((1, 32, 32), bool)
    tissue[0, :, :16] = True
    fill = tissue_mean_fill(x + 3, tissue)
    assert torch.allclose(fill, torch.full_like(x, float((x + 3)[0, 0, :, :16].mean())))


def test_score_is_the_summed_logit_over_m_and_dice_is_near_m():
    x = torch.rand(2, 1, 16, 16) + 0.5
    m = np.zeros((2, 16, 16), bool)
    m[:, 4:8, 4:8] = True
    zone = dilate(m, 2)
    y, dice = score_slices(LinearModel(), x, m, zone, 1)
    assert np.allclose(y, [float(x[b, 0][torch.from_numpy(m[b])].sum()) for b in range(2)], rtol=1e-5)
    assert np.allclose(dice, 2 * 16 / (zone[0].sum() + 16))  # every pixel is class 1: all of the zone counts


# ---- curves -------------------------------------------------------------------------------------------------

def _curves(model, x, m, saliency_maps, mode, steps=10, seed=0):
    rng = np.random.default_rng(seed)
    positions = np.stack([[rank_positions(s[b], rng) for b in range(len(x))] for s in saliency_maps])
    return perturbation_curves(model, x, m, m, 1, positions, torch.zeros_like(x), mode=mode,
                               fractions=uniform_fractions(steps))


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_a_random_map_has_the_expected_auc_on_a_linear_model(mode):
    """y_M is linear in the M pixels kept; a random ranking removes M at the rate it removes the slice, so the
    normalised curve is 1 - f (deletion) or f (insertion) up to sampling noise: the AUC is 0.5."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 64, 64) + 0.5
    m = np.stack([_box()] * 4)
    random_maps = [np.random.default_rng(s).random((4, 64, 64)) for s in range(8)]
    normalised, valid = normalize_curves(_curves(LinearModel(), x, m, random_maps, mode))
    assert valid.all()
    areas = curve_auc(normalised, uniform_fractions(10))
    assert areas.mean() == pytest.approx(0.5, abs=0.02)
    assert np.all(np.abs(areas - 0.5) < 0.08)
    expected = 1 - uniform_fractions(10) if mode == "deletion" else uniform_fractions(10)
    assert np.abs(normalised.mean((0, 1)) - expected).max() < 0.04


def test_m_itself_is_deleted_in_the_first_step():
    x = torch.rand(1, 1, 64, 64) + 0.5
    m = _box()[None]  # 400 of 4096 pixels: under 10%
    normalised, _ = normalize_curves(_curves(LinearModel(), x, m, [m.astype(float)], "deletion"))
    assert np.allclose(normalised[0, 0], [1] + [0] * 10, atol=1e-6)
    assert curve_auc(normalised, uniform_fractions(10))[0, 0] == pytest.approx(0.05)


def test_slices_with_y0_not_above_zero_or_not_above_the_fill_are_left_out():
    fractions = uniform_fractions(2)
    curves = Curves("deletion", fractions, np.ones((1, 4, 3)), np.ones((1, 4, 3)),
                    original=np.array([-1.0, 0.0, 2.0, 1.0]), filled=np.array([-2.0, -1.0, 0.0, 3.0]))
    normalised, valid = normalize_curves(curves)
    assert valid.tolist() == [False, False, True, False]
    assert np.isnan(normalised[0, [0, 1, 3]]).all() and np.allclose(normalised[0, 2], 0.5)


def test_curves_refuse_bad_fractions_and_modes():
    x, m = torch.ones(1, 1, 8, 8), np.ones((1, 8, 8), bool)
    positions = np.zeros((1, 1, 8, 8), dtype=np.int64)
    with pytest.raises(ValueError, match="mode"):
        perturbation_curves(LinearModel(), x, m, m, 1, positions, x, mode="erase", fractions=[0, 1])
    with pytest.raises(ValueError, match="fractions"):
        perturbation_curves(LinearModel(), x, m, m, 1, positions, x, mode="deletion", fractions=[0, 0.5])


def test_the_inference_copy_computes_the_same_logits_and_leaves_the_model_alone():
    model = make_unet((4, 8, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not any(m.training for m in fast.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
