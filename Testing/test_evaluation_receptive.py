"""The receptive bound (evaluation/receptive.py) on tiny networks whose reach is known."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from seghirescam import explain_slices
from seghirescam.evaluation.receptive import receptive_bounds, structural_copy


class Chain(nn.Module):
    """Three 3x3 convolutions after the layer ``first``, then a 1x1 head: its maps reach 3 pixels from M."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.rest = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                  nn.BatchNorm2d(4), nn.LeakyReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)
        self.eval()

    def forward(self, x):
        return self.head(self.rest(self.first(x)))


def test_the_bound_of_a_conv_chain_is_m_widened_by_its_reach():
    torch.manual_seed(0)
    model = Chain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = torch.zeros(1, 20, 20, dtype=torch.bool)
    m[0, 9, 10] = True
    bounds = receptive_bounds(model, torch.zeros(1, 1, 20, 20), m, 1, ["first", "rest"])
    rows, cols = np.nonzero(bounds["first"][0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 12, 7, 13)  # 3 convolutions: 3 pixels
    assert bounds["first"][0].sum() == 49 and bounds["rest"][0].sum() == 1  # the head is 1x1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_seg_hires_maps_stay_inside_the_bound_for_any_weights():
    m = torch.zeros(3, 20, 20, dtype=torch.bool)
    m[:, 4:7, 12:15] = True
    for seed in range(3):
        torch.manual_seed(seed)
        model = Chain()
        x = torch.randn(3, 1, 20, 20)
        bound = receptive_bounds(model, x, m, 1, ["first"], structural=structural_copy(model))["first"]
        heat = explain_slices(model, x, m, 1, layers=("first",), methods=("seg-hires-grad-cam",))
        heat = heat[("seg-hires-grad-cam", "first")].numpy()
        assert heat.max() > 0 and np.all(heat[~bound] == 0)


def test_a_pooled_unet_layer_reaches_further_than_the_one_feeding_the_head():
    from conftest import make_unet

    model = make_unet((4, 8, 16), num_classes=3)
    m = torch.zeros(1, 32, 32, dtype=torch.bool)
    m[0, 14:18, 14:18] = True
    bounds = receptive_bounds(model, torch.zeros(1, 1, 32, 32), m, 1, ["bottleneck", "dec2", "dec1"])
    areas = {name: int(b.sum()) for name, b in bounds.items()}
    assert areas["dec1"] < areas["dec2"] < areas["bottleneck"] and bounds["dec1"][0][m[0].numpy()].all()
