"""The wheel is complete: built from the project, installed into a clean venv, it runs the demo.

Catches what an editable checkout hides: a module or a data file (the default model and its
card) missing from the wheel, or a runtime dependency that is not declared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_TORCH = "torch==2.13.0"  # the CPU build on this machine's disk; a bare range could pull a CUDA build


def _run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **env}
    environment.pop("PYTHONPATH", None)
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo(tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(ROOT)], cwd=tmp_path)
    wheel = next(wheels.glob("seghirescam-*.whl"))

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True, system_site_packages=False)
    python = environment / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", CPU_TORCH, str(wheel)], cwd=tmp_path)

    where = _run([str(python), "-c", "import seghirescam.models as m; print(m.default_model_path())"], cwd=tmp_path)
    model_path = Path(where.stdout.strip())
    assert environment in model_path.parents and model_path.is_file(), f"default model not in the wheel: {model_path}"

    out = tmp_path / "demo-out"
    _run([str(environment / "bin" / "seghirescam"), "demo", "--out", str(out)], cwd=tmp_path)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [target["explained_class"] for target in summary["targets"]] == ["kidney", "tumor"]
    assert [target["target"] for target in summary["targets"]] == ["kidney__M-prediction", "tumor__M-prediction"]
    for target in summary["targets"]:
        for path in target["files"].values():
            assert Path(path).is_file() and Path(path).stat().st_size > 0, path
