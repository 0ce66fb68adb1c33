"""The command line imports only what a subcommand needs: ``--help`` no torch, ``demo`` no scipy/dask/evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from seghirescam.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("MODULES=" + json.dumps(sorted(sys.modules)))
"""
# The evaluation's settings are plain data (defaults of `evaluate`'s options); its code is not.
ALLOWED_EVALUATION = {"seghirescam.evaluation", "seghirescam.evaluation.config"}


def _modules_after(*argv: str, cwd) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, encoding="utf-8",
                          errors="replace", cwd=cwd, timeout=300)
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES="))
    return set(json.loads(line[len("MODULES="):]))


def _loaded(modules: set[str], root: str) -> list[str]:
    return sorted(m for m in modules if m == root or m.startswith(root + "."))


def test_help_imports_no_torch_scipy_dask_or_evaluation(tmp_path):
    modules = _modules_after("--help", cwd=tmp_path)
    for heavy in ("torch", "scipy", "dask", "distributed", "matplotlib", "SimpleITK", "numpy"):
        assert not _loaded(modules, heavy), f"seghirescam --help imports {heavy}"
    assert set(_loaded(modules, "seghirescam.evaluation")) <= ALLOWED_EVALUATION


@pytest.mark.slow
def test_demo_imports_no_scipy_dask_or_evaluation_code(tmp_path):
    modules = _modules_after("demo", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert "seghirescam.cam.engine" in modules  # it did run
    for heavy in ("scipy", "dask", "distributed"):
        assert not _loaded(modules, heavy), f"seghirescam demo imports {heavy}"
    assert set(_loaded(modules, "seghirescam.evaluation")) <= ALLOWED_EVALUATION
