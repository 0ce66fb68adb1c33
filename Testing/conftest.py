"""Shared fixtures: small U-Nets with non-trivial batch-norm statistics, the shared real CT.

The real CT lives in ``../shared/data/ct-abdomen-totalseg`` beside the repository (or in
``$SEGHIRESCAM_DATA/ct-abdomen-totalseg``). Where it is missing, its tests are skipped with a
message saying so; under ``CI=true`` they fail instead, so CI never passes by skipping them.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from seghirescam import UNet2D
from seghirescam.imaging.sample_data import real_ct_dir as _real_ct_dir

REAL_CT_DIR = _real_ct_dir()
# Nothing of ours may need torchvision (PyPI's build fails beside the CPU torch here) or timm (which
# imports it): both are blocked for the whole session, so any import of them fails a test.
for _blocked in ("torchvision", "timm"):
    sys.modules[_blocked] = None  # type: ignore[assignment]
ON_CI = os.environ.get("CI", "").lower() == "true"
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... under pytest-xdist, else None
if WORKER is not None:
    # Each worker gets its share of the CPUs: several workers with all threads each would oversubscribe them.
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def skip_or_fail(reason: str) -> None:
    """Skip a test whose prerequisite is missing, or fail it under ``CI=true``."""
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_real_ct(name: str = "example_ct.nii.gz") -> Path:
    """The path of a file of the shared real CT folder; skip (fail on CI) when it is missing."""
    path = REAL_CT_DIR / name
    if not path.exists():
        skip_or_fail(f"the shared real CT file {path} is missing: put ../shared/data/ct-abdomen-totalseg beside "
                     "the repository or set SEGHIRESCAM_DATA to the folder holding ct-abdomen-totalseg")
    return path


def require_module(name: str) -> ModuleType:
    """Import a test-only dependency (e.g. ``slicer`` from slicer-core); skip (fail on CI) without it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        skip_or_fail(f"{name} is not importable ({error}); install the test requirements (requirements.txt)")


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


@pytest.fixture(scope="session")
def tiny_nnunet_root(tmp_path_factory) -> Path:
    """The root of the tiny nnU-Net tree (2d and 3d_fullres results folders), built once per session.

    Building it runs nnU-Net's planner and trainer (about 20 s), so every test module shares one tree
    and treats it as read-only (a test that alters a folder alters a copy). The folders:
    ``nnunet_folders.ensure_tiny_results(root)``.
    """
    require_module("nnunetv2")
    from nnunet_folders import ensure_tiny_results

    base = tmp_path_factory.getbasetemp()
    # pytest-xdist: the workers share one tree in the run's common temporary folder; the first builds it
    root = (base if WORKER is None else base.parent) / "nnunet-shared"
    root.mkdir(exist_ok=True)
    with (root.parent / "nnunet-shared.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_tiny_results(root)
    return root


@pytest.fixture
def small_unet() -> UNet2D:
    return make_unet()


@pytest.fixture
def real_ct_dir() -> Path:
    """The shared real CT's folder (skips, or fails under CI=true, when it is missing)."""
    return require_real_ct().parent
