"""Malformed options and inputs on the command line: argparse-style errors naming the option, exit code 2.

Parsing errors leave through argparse (``SystemExit(2)``, "seghirescam <command>: error: argument
--x: ..."); errors found while running leave through ``cli.app.main`` (return code 2, one line
"seghirescam <command>: error: ..."). Neither may print a traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from seghirescam.cli import main
from seghirescam.cli.app import _parser
from seghirescam.imaging.geometry import Geometry
from seghirescam.imaging.volumes import Volume, write_volume

SHAPE_KJI = (4, 5, 6)  # I, J, K = 6, 5, 4


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def test_every_option_of_every_command_has_help():
    parser = _parser()
    commands = _subparsers(parser)
    assert set(commands) == {"demo", "explain", "batch", "train", "evaluate"}
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in [("seghirescam", parser), *commands.items()] for action in sub._actions
               if not isinstance(action, argparse._SubParsersAction)
               and (not action.help or action.help == argparse.SUPPRESS or len(action.help) < 8)]
    assert missing == []


@pytest.fixture
def case(tmp_path) -> tuple[Path, Path]:
    """A tiny CT (HU) and its labels (value 1 in the middle) as NIfTI."""
    geometry = Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = np.zeros(SHAPE_KJI, np.uint8)
    labels[1:3, 1:4, 2:5] = 1
    ct = write_volume(Volume(np.full(SHAPE_KJI, 40, np.int16), geometry), tmp_path / "ct.nii.gz")
    return ct, write_volume(Volume(labels, geometry), tmp_path / "seg.nii.gz")


def _explain(tmp_path: Path, case: tuple[Path, Path], *extra: str) -> list[str]:
    return ["explain", "--out", str(tmp_path / "out"), "--ct", str(case[0]), "--seg", str(case[1]), "--device", "cpu",
            *extra]


def _parse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("point, words", [
    ("1,2", "expected three voxel indices I,J,K (e.g. 120,85,40), got '1,2'"),
    ("1,2,3,4", "expected three voxel indices I,J,K (e.g. 120,85,40), got '1,2,3,4'"),
    ("a,b,c", "expected three voxel indices I,J,K (e.g. 120,85,40), got 'a,b,c'"),
    ("1,-2,3", "voxel indices I,J,K count from 0, got '1,-2,3'"),
])
def test_malformed_point_names_the_option(tmp_path, case, capsys, point, words):
    err = _parse_error(_explain(tmp_path, case, "--label", "1", "--pixel-set", "point", f"--point={point}"), capsys)
    assert err == f"seghirescam explain: error: argument --point: {words}"


@pytest.mark.parametrize("command", ["demo", "explain", "batch"])
def test_batch_size_that_is_no_number_names_the_option(command, capsys):
    required = {"demo": ["--out", "o"], "explain": ["--out", "o", "--ct", "c", "--seg", "s", "--label", "1"],
                "batch": ["m.csv", "--out", "o"]}[command]
    err = _parse_error([command, *required, "--batch-size", "abc"], capsys)
    assert "argument --batch-size: must be a positive integer or 'auto', got 'abc'" in err


def _run_error(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("target", ["-1", "4", "+7"])
def test_target_class_out_of_range_is_said_so(tmp_path, case, capsys, target):
    err = _run_error(_explain(tmp_path, case, "--label", "1", f"--target-class={target}"), capsys)
    assert f"target class {int(target)} is out of range 0..3 (background, kidney, tumor, cyst)" in err
    assert "segment name" not in err


def test_point_outside_the_ct_is_reported_in_the_order_typed(tmp_path, case, capsys):
    err = _run_error(_explain(tmp_path, case, "--label", "1", "--target-class", "kidney", "--pixel-set", "point",
                              "--point", "9,1,2"), capsys)
    assert "point I,J,K = 9,1,2 lies outside the CT" in err and "run 0..5, 0..4, 0..3" in err


def test_corrupt_ct_on_the_command_line_is_one_error(tmp_path, case, capsys):
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(case[0].read_bytes()[:-20])
    err = _run_error(["explain", "--out", str(tmp_path / "out"), "--ct", str(truncated), "--seg", str(case[1]),
                      "--label", "1", "--target-class", "kidney", "--device", "cpu"], capsys)
    assert err.startswith(f"seghirescam explain: error: {truncated} is corrupt (truncated or damaged)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["explain", "--out", "o", "--ct", "c", "--seg", "s", "--label", "1", "--point-radius", "-1"],
     "argument --point-radius: must be an integer >= 0, got '-1'"),
    (["batch", "m.csv", "--out", "o", "--executor", "dask", "--workers", "0"],
     "argument --workers: must be a positive integer, got '0'"),
    (["train", "--out", "m.safetensors", "--steps", "ten"], "argument --steps: must be a positive integer, got 'ten'"),
    (["train", "--out", "m.safetensors", "--max-minutes", "-5"],
     "argument --max-minutes: must be a positive number, got '-5'"),
])
def test_out_of_range_numbers_name_the_option(argv, words, capsys):
    assert _parse_error(argv, capsys).endswith(words)
