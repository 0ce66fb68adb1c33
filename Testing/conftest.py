"""Shared fixtures: small U-Nets with non-trivial batch-norm statistics, the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seghirescam import UNet2D

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_CT_DIR = SHARED_DATA / "ct-abdomen-totalseg"


def make_unet(widths=(4, 8, 16), num_classes=3, seed=0) -> UNet2D:
    """A small U-Net in eval mode with random weights and random batch-norm statistics."""
    torch.manual_seed(seed)
    model = UNet2D(in_channels=1, num_classes=num_classes, widths=widths)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
        model.head.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture
def small_unet() -> UNet2D:
    return make_unet()


@pytest.fixture
def real_ct_dir() -> Path:
    if not (REAL_CT_DIR / "example_ct.nii.gz").exists():
        pytest.skip(f"the shared real CT is not at {REAL_CT_DIR}; tests that need it are skipped")
    return REAL_CT_DIR
