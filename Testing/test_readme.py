"""README's two set-up commands exist, and CI runs the test command exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    block = re.search(r"## Set up and run.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    commands = _commands()
    assert len(commands) == 2
    assert "seghirescam demo" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert _commands()[1].strip() in ci_lines


def test_the_python_example_gives_the_maps_of_the_cli(tmp_path, real_ct_dir):
    """README's Python API block, run as written (data folder pointed at the shared CT), equals ``explain``."""
    import numpy as np
    import SimpleITK as sitk

    from seghirescam.cli import main

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Python API\s*```python\n(.*?)```", text, re.S).group(1)
    assert 'data = Path("../shared/data/ct-abdomen-totalseg")' in block
    namespace: dict = {}
    exec(block.replace('Path("../shared/data/ct-abdomen-totalseg")', f"Path({str(real_ct_dir)!r})"), namespace)
    out = tmp_path / "cli"
    assert main(["explain", "--ct", str(real_ct_dir / "example_ct.nii.gz"), "--seg",
                 str(real_ct_dir / "example_seg_fast_force_split.nii.gz"), "--label", "3", "--target-class", "kidney",
                 "--layer", "bottleneck", "--out", str(out), "--device", "cpu"]) == 0
    written = next(out.glob("*_seg-hires-grad-cam_bottleneck.nrrd"))
    cli_map = sitk.GetArrayFromImage(sitk.ReadImage(str(written)))
    assert namespace["hires"].shape == cli_map.shape and namespace["hires"].max() > 0
    assert np.abs(namespace["hires"] - cli_map).max() == 0
