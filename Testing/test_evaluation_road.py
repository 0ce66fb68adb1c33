"""ROAD's noisy linear imputation (evaluation/road.py) on images whose imputation is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seghirescam.evaluation.road import NEIGHBOUR_WEIGHTS, road_impute, road_impute_image


def _ramp(shape=(24, 30)) -> np.ndarray:
    rows, cols = np.indices(shape)
    return 3.0 * rows - 2.0 * cols + 5.0


def test_weights_are_roads_and_sum_to_one():
    weights = sorted(w for _, _, w in NEIGHBOUR_WEIGHTS)
    assert weights == [1 / 12] * 4 + [1 / 6] * 4 and sum(weights) == pytest.approx(1.0)


def test_a_linear_image_is_imputed_exactly_inside_and_kept_pixels_are_untouched():
    image = _ramp()
    remove = np.zeros(image.shape, bool)
    remove[5:15, 8:20] = True  # a block that does not touch the border: the stencil is symmetric there
    remove[18, 3] = True
    filled = road_impute_image(image, remove)
    np.testing.assert_allclose(filled, image, atol=1e-9)  # a linear function is its own neighbour average
    constant = road_impute_image(np.where(remove, 1000.0, 7.0), remove)
    np.testing.assert_allclose(constant[remove], 7.0)  # the removed values themselves leave no trace


def test_the_fill_carries_no_trace_of_the_removed_region_and_is_a_weighted_mean():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(16, 16))
    remove = np.zeros(image.shape, bool)
    remove[7, 7] = True
    filled = road_impute_image(image, remove)
    neighbours = sum(w * image[7 + dr, 7 + dc] for dr, dc, w in NEIGHBOUR_WEIGHTS)
    assert filled[7, 7] == pytest.approx(neighbours)
    assert np.array_equal(filled[~remove], image[~remove])


def test_batch_imputation_is_seeded_noisy_and_leaves_the_input_alone():
    x = torch.from_numpy(np.stack([_ramp(), -_ramp()])[:, None].astype(np.float32))
    before = x.clone()
    remove = np.zeros((2, 24, 30), bool)
    remove[:, 6:12, 6:12] = True
    first = road_impute(x, remove, np.random.default_rng(3), noise=0.5)
    second = road_impute(x, remove, np.random.default_rng(3), noise=0.5)
    assert torch.equal(first, second) and torch.equal(x, before)
    difference = (first - x)[:, 0].numpy()
    assert np.all(difference[~remove] == 0)
    assert 0.3 < difference[remove].std() < 0.7  # the noise ROAD adds to imputed pixels only
    everything = road_impute(x, np.ones((2, 24, 30), bool), np.random.default_rng(0), noise=0.0)
    np.testing.assert_allclose(everything[0, 0].numpy(), x[0, 0].numpy().mean(), rtol=1e-5)  # nothing kept: mean


def test_the_images_solved_in_parallel_give_what_one_thread_gives(monkeypatch):
    from seghirescam.evaluation import road

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(5, 2, 24, 20)).astype(np.float32))
    remove = rng.random((5, 24, 20)) < 0.4
    remove[2] = False  # an image with nothing removed is left as it is
    parallel = road_impute(x, remove, np.random.default_rng(7))
    monkeypatch.setattr(road, "_solver_threads", lambda jobs: 1)
    serial = road_impute(x, remove, np.random.default_rng(7))
    assert torch.equal(parallel, serial) and torch.equal(parallel[2], x[2])
    assert road._solver_threads(1) == 1 and road._solver_threads(1000) >= 1
