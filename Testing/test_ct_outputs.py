"""What ``explain`` writes: a folder it owns, names that say what is explained, panels people can read.

Tiny phantoms and a tiny model (``test_cohort_runner``); signals come from ``fault_injection``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fault_injection import inject
from test_cohort_faults import unwritable_folder
from test_cohort_runner import tiny_model, write_case, write_label_names

from seghirescam.cam.vocabulary import NORMALIZATIONS
from seghirescam.cli import main
from seghirescam.ct.cases import label_names_in_file
from seghirescam.ct.figures import SCALING_TEXT, panel_slices
from seghirescam.ct.outputs import file_safe, output_stem

ROOT = Path(__file__).resolve().parents[1]
FAULT_SCRIPT = Path(__file__).resolve().parent / "fault_injection.py"
ONE_METHOD = ("--method", "seg-hires-grad-cam")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(folder, CT, labels (KiTS values, no names), names JSON, model) of a tiny phantom."""
    folder = tmp_path_factory.mktemp("explain")
    ct, seg = write_case(folder, "p", 4)
    return folder, folder / ct, folder / seg, write_label_names(folder), tiny_model(folder)


def explain(case, out: Path, *extra: str) -> int:
    folder, ct, seg, _, model = case
    return main(["explain", "--ct", str(ct), "--seg", str(seg), "--out", str(out), "--model", str(model),
                 "--device", "cpu", *extra])


def contents(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def listed(out: Path) -> set[str]:
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {Path(p).name for t in summary["targets"] for p in t["files"].values()} | {"summary.json"}


# ---- explain owns its output folder --------------------------------------------------------------------------

def test_a_folder_with_another_runs_results_is_refused_unless_overwrite(case, tmp_path, capsys):
    out = tmp_path / "out"
    assert explain(case, out, "--label", "1", "--target-class", "kidney", *ONE_METHOD) == 0
    first = contents(out)
    assert set(first) == listed(out)
    # another run into the same folder: refused, nothing changed (no old and new maps side by side)
    assert explain(case, out, "--label", "2", "--target-class", "tumor", *ONE_METHOD) == 2
    assert "already holds the results of another run" in capsys.readouterr().err
    assert contents(out) == first
    # --overwrite replaces all of the earlier run's files; a file of the user's stays
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert explain(case, out, "--label", "2", "--target-class", "tumor", "--method", "seg-grad-cam", "--overwrite") == 0
    assert set(p.name for p in out.iterdir()) == listed(out) | {"notes.txt"}
    assert all(name.startswith("tumor__M-label_2_") for name in listed(out) - {"summary.json"})


def test_the_output_folder_is_checked_before_any_work(case, tmp_path, capsys):
    missing_ct = ["--ct", str(tmp_path / "no-such-ct.nii.gz")]  # the CT would fail later: --out must fail first
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    for out, message in ((tmp_path / "a-file", "is a file, not a folder"),
                         (tmp_path / "a-file" / "sub", "a part of the path is a file"),
                         (unwritable_folder(tmp_path), "--out")):
        assert main(["explain", *missing_ct, "--seg", str(case[2]), "--label", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "no-such-ct" not in err and "Traceback" not in err
    # a run that fails after the check leaves no folder behind
    assert main(["explain", *missing_ct, "--seg", str(case[2]), "--label", "1", "--out", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()


def _signal_run(case, out: Path, fault: str, phase: str = "heatmap") -> subprocess.CompletedProcess:
    folder, ct, seg, _, model = case
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "SegHiResCAM"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(FAULT_SCRIPT), phase, fault, "", "--", "explain", "--ct", str(ct),
                           "--seg", str(seg), "--out", str(out), "--model", str(model), "--device", "cpu",
                           "--label", "2", "--target-class", "tumor", "--overwrite"],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)


def test_ctrl_c_in_explain_exits_130_and_leaves_the_folder_as_it_was(case, tmp_path):
    out = tmp_path / "out"
    assert explain(case, out, "--label", "1", "--target-class", "kidney", *ONE_METHOD) == 0
    before = contents(out)
    done = _signal_run(case, out, "SIGINT")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "interrupted" in done.stderr
    assert contents(out) == before  # no new heatmap, no summary change, no hidden temporary file


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["heatmap", "panel", "summary"])
def test_temporary_files_of_a_killed_explain_are_removed_by_the_next_run(case, tmp_path, phase):
    out = tmp_path / "out"
    assert explain(case, out, "--label", "1", "--target-class", "kidney", *ONE_METHOD) == 0
    before = contents(out)
    assert _signal_run(case, out, "SIGKILL", phase).returncode == -9
    visible = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".tmp-")}
    assert visible == before and any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert explain(case, out, "--label", "1", "--target-class", "kidney", *ONE_METHOD, "--overwrite") == 0
    assert set(p.name for p in out.iterdir()) == listed(out)


def test_an_interrupted_publish_puts_the_earlier_results_back(case, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert explain(case, out, "--label", "1", "--target-class", "kidney", *ONE_METHOD) == 0
    before = contents(out)
    # a full disk while the new heatmap is moved in (the earlier files already moved aside, the new panel in)
    fired = inject("heatmap", "ENOSPC", str(out / "tumor__M"), setattr=monkeypatch.setattr)
    assert explain(case, out, "--label", "2", "--target-class", "tumor", *ONE_METHOD, "--overwrite") == 2
    monkeypatch.undo()
    assert fired and contents(out) == before


# ---- outputs say what they explain ---------------------------------------------------------------------------

@pytest.mark.parametrize("request_args, message", [
    (["--label", "2"], "label 2 has no name"),
    (["--segment", "tumor"], "the label file names no labels"),
])
def test_label_values_are_never_named_after_the_models_classes(case, tmp_path, capsys, request_args, message):
    """The label file names nothing: value 2 is not silently the model's class 2, nor "tumor" its label 2
    (in a TotalSegmentator map 2 is the right kidney)."""
    assert explain(case, tmp_path / "out", *request_args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if "--label" in request_args:
        assert "--target-class, one of 0 background, 1 kidney, 2 tumor, 3 cyst" in err
    assert not (tmp_path / "out").exists()


def test_names_stored_in_a_label_file_name_the_outputs(case, tmp_path):
    """A Slicer .seg.nrrd names its segments: "renal mass" explained for class kidney says both."""
    folder, _, seg, _, _ = case
    labels = sitk.ReadImage(str(seg))
    for key, value in {"Segment0_Name": "renal mass", "Segment0_LabelValue": "2", "Segment0_Layer": "0",
                       "Segment1_Name": "kidney", "Segment1_LabelValue": "1", "Segment1_Layer": "0"}.items():
        labels.SetMetaData(key, value)
    named = tmp_path / "labels.seg.nrrd"
    sitk.WriteImage(labels, str(named))
    assert label_names_in_file(named) == {2: "renal mass", 1: "kidney"}
    assert label_names_in_file(seg) == {}
    out = tmp_path / "out"
    assert main(["explain", "--ct", str(case[1]), "--seg", str(named), "--segment", "renal mass", "--target-class",
                 "kidney", "--out", str(out), "--model", str(case[4]), "--device", "cpu", *ONE_METHOD]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (summary["target_class"], summary["pixel_set_name"], summary["segment"]) == ("kidney", "renal mass",
                                                                                        "renal mass")
    assert sorted(listed(out)) == ["kidney__M-renal_mass_panel.png",
                                   "kidney__M-renal_mass_seg-hires-grad-cam_bottleneck.nrrd", "summary.json"]


def test_one_file_safe_name_rule():
    assert output_stem("kidney", "liver") == "kidney__M-liver"
    assert file_safe("Left kidney") == "Left_kidney" and file_safe("point 60,48,85") == "point_60_48_85"
    assert file_safe("a__b") == "a_b"  # "__" only ever separates the class from M
    assert file_safe("../../etc/x") == "etc_x" and file_safe("///") == "unnamed"


# ---- panels --------------------------------------------------------------------------------------------------

def test_panel_rows_hold_m_only():
    mask = np.zeros((30, 4, 4), bool)
    mask[[3, 12, 13, 14, 15, 16, 27], 1, 1] = True
    mask[14, :, :] = True
    rows = panel_slices(mask)
    assert 14 in rows and len(rows) <= 5 and all(mask[s].any() for s in rows)
    point = np.zeros((30, 4, 4), bool)
    point[7, 2, 2] = True
    assert panel_slices(point) == [7]


@pytest.fixture
def panels(monkeypatch):
    import seghirescam.ct.outputs as outputs

    calls = []
    real = outputs.write_panel

    def spy(path, ct, segment, mask, maps, slices, **kwargs):
        calls.append({"slices": slices, **kwargs})
        return real(path, ct, segment, mask, maps, slices, **kwargs)

    monkeypatch.setattr(outputs, "write_panel", spy)
    return calls


def test_point_panel_shows_the_explained_slice_numbered_as_in_the_file(tmp_path, panels):
    """KiTS stores the axial axis last and inferior-first: the panel's row is the file's own I index."""
    ct, seg = write_case(tmp_path, "kits", 4, kits=True)
    model = tiny_model(tmp_path)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / seg)))  # (k, j, i)
    k, j, i = np.argwhere(labels == 1)[len(np.argwhere(labels == 1)) // 2]
    out = tmp_path / "out"
    assert main(["explain", "--ct", str(tmp_path / ct), "--seg", str(tmp_path / seg), "--label", "1",
                 "--target-class", "kidney", "--pixel-set", "point", "--point", f"{i},{j},{k}", "--out", str(out),
                 "--model", str(model), "--device", "cpu", *ONE_METHOD, "--normalize", "slice"]) == 0
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"kidney__M-point_{i}_{j}_{k}_seg-hires-grad-cam_bottleneck.nrrd")))
    assert np.flatnonzero(heat.any(axis=(0, 1))).tolist() == [i]  # the explained slice, along the file's I axis
    panel = panels[0]
    assert panel["row_labels"] == [f"i = {i}"] and len(panel["slices"]) == 1
    assert "own I index" in panel["title"] and "explained class: kidney" in panel["title"]
    assert panel["scaling"] == "slice"


def test_every_normalisation_has_a_stated_scaling():
    assert set(SCALING_TEXT) == set(NORMALIZATIONS)
