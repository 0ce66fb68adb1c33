"""``benchmarks/gpu_check.sh``: refuses without CUDA; its CPU dry run goes end to end and prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
def test_refuses_without_cuda():
    done = _run("--no-nnunet")
    assert done.returncode == 2
    assert "needs a machine with a CUDA GPU" in done.stderr and "--dry-run" in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_dry_run_prints_one_json_line(tmp_path, tiny_nnunet_root):
    (tmp_path / "tiny").symlink_to(tiny_nnunet_root, target_is_directory=True)  # the session's tiny nnU-Net tree
    done = _run("--dry-run", "--rounds", "1", "--subset", "2", "--work", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-2000:]
    report = json.loads(lines[0])
    unet = report["unet"]
    assert report["dry_run"] and unet["slices_explained"] == unet["shape"][0] == 6
    assert set(unet["engine_over_floor"]) == {"fp32", "bf16"} and all(v > 0 for v in unet["engine_over_floor"].values())
    assert unet["gradcam_per_slice_over_engine"] > 0
    for method, deviation in unet["bf16_max_deviation_of_max"].items():
        assert 0 < deviation < 0.5, method  # bf16 is approximate, not wrong
    assert report["nnunet"]["configuration"] == "3d_fullres" and report["nnunet"]["tiles_run"] >= 1
