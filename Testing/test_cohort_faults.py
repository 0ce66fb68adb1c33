"""``seghirescam batch`` under faults: no good output is ever lost, every published file is whole.

A cohort is run once (run A); then a re-run that must rewrite a case (run B: the case's CT replaced
by another, or missing) is hit at one write phase by Ctrl-C, SIGKILL, a full disk (ENOSPC) or an
interrupt; afterwards every published file must read completely, and run A again must give back
exactly the first outputs, the case hit reused where its outputs were never replaced.
Faults come from ``fault_injection`` (in-process for exceptions, in a subprocess for signals).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from fault_injection import PHASES, inject
from test_cohort_runner import (PHANTOM_NAMES, batch, heat, leftovers, read_summary, record, write_cohort,
                                write_label_names, write_manifest)

from seghirescam.cohort.case_runner import FAILURE_NAME
from seghirescam.cohort.manifest import ManifestError, read_manifest
from seghirescam.cohort.runner import BatchSettings, run_batch

FAULT_SCRIPT = Path(__file__).resolve().parent / "fault_injection.py"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """Run A of a 2-case cohort: (manifest, model, its output folder, manifests whose case1 CT is missing or another)."""
    data = tmp_path_factory.mktemp("faults")
    manifest, model = write_cohort(data / "data", 2)
    rows = [{"case_id": r.case_id, "ct": r.ct.name, "seg": r.seg.name, "segment": r.segment}
            for r in read_manifest(manifest)]
    missing = write_manifest(manifest.parent, [rows[0], {**rows[1], "ct": "moved_away_ct.nii.gz"}], "missing.csv")
    changed = write_manifest(manifest.parent, [rows[0], {**rows[1], "ct": rows[0]["ct"]}], "changed.csv")
    out = data / "a"
    assert batch(manifest, out, model) == 0
    return manifest, model, out, missing, changed


def _maps(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): heat(p) for p in sorted(out.glob("case*/*.nrrd"))}


def check_published(out: Path) -> None:
    """Every published record parses and every file it lists reads completely; the summary parses."""
    for folder in (p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        r = record(out, folder.name)
        if (folder / FAILURE_NAME).exists():
            assert json.loads((folder / FAILURE_NAME).read_text(encoding="utf-8"))["status"] == "failed"
        if r["status"] == "ok":
            for name in r["files"].values():
                path = folder / name
                data = matplotlib.image.imread(path) if path.suffix == ".png" else heat(path)
                assert data.size > 0
    if (out / "summary.csv").exists():
        assert all(row["case_id"].startswith("case") for row in read_summary(out))


def _b_run(baseline, phase: str) -> list[str]:
    """Run B's command line arguments: a re-run that rewrites case1 with another CT (its CT missing for the
    failure phase); case0 is reused."""
    _, model, _, missing, changed = baseline
    return [str(missing if phase == "failure" else changed), "--model", str(model), "--device", "cpu",
            "--label-names", str(write_label_names(changed.parent))]


def _recover_and_compare(baseline, out: Path, phase: str) -> None:
    """Run A again: the first outputs come back exactly; case1 reused unless it had been replaced."""
    manifest, model, first, *_ = baseline
    assert batch(manifest, out, model) == 0
    now, then = _maps(out), _maps(first)
    assert now.keys() == then.keys() and all(np.array_equal(now[name], then[name]) for name in then)
    reused = {r["case_id"]: r["reused"] for r in read_summary(out)}
    if phase != "summary":  # every other fault hits case1 before its new outputs were in place
        assert reused["case1"] == "yes"
        assert record(out, "case1")["finished"] == record(first, "case1")["finished"]
    assert not leftovers(out) and not list(out.rglob(FAILURE_NAME))
    assert not any(p.name.startswith(".tmp") for p in out.rglob("*"))


@pytest.fixture
def rerun_out(baseline, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(baseline[2], out)
    return out


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("fault", ["interrupt", "ENOSPC"])
def test_an_exception_at_each_write_phase_loses_nothing(baseline, rerun_out, monkeypatch, capsys, phase, fault):
    """Ctrl-C (KeyboardInterrupt) or a full disk (OSError ENOSPC) just before a file is published."""
    def interrupt():
        raise KeyboardInterrupt

    summary_before = (rerun_out / "summary.csv").read_bytes()
    fired = inject(phase, interrupt if fault == "interrupt" else "ENOSPC", "" if phase == "summary" else "case1",
                   setattr=monkeypatch.setattr)
    code = main_batch(rerun_out, _b_run(baseline, phase))
    monkeypatch.undo()
    assert fired, f"the phase {phase} was never reached"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if fault == "interrupt":
        assert code == 130
    elif phase in ("failure", "summary"):  # the failure record or the summary itself cannot be written
        assert code == 2 and "No space left on device" in err
    else:  # case1 failed; its record says so, beside its kept outputs
        assert code == 1
        failure = json.loads((rerun_out / "case1" / FAILURE_NAME).read_text(encoding="utf-8"))
        assert failure["error"]["type"] == "OSError" and failure["kept_outputs"]["key"] == record(rerun_out, "case1")["key"]
    if phase == "summary":
        assert (rerun_out / "summary.csv").read_bytes() == summary_before
    check_published(rerun_out)
    _recover_and_compare(baseline, rerun_out, phase)


def main_batch(out: Path, args: list[str]) -> int:
    from seghirescam.cli import main

    return main(["batch", args[0], "--out", str(out), *args[1:]])


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("fault", ["SIGINT", "SIGKILL"])
def test_a_signal_at_each_write_phase_loses_nothing(baseline, rerun_out, phase, fault):
    """A real Ctrl-C (SIGINT) or SIGKILL delivered to ``seghirescam batch`` just before a file is published."""
    args = _b_run(baseline, phase)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "SegHiResCAM"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(FAULT_SCRIPT), phase, fault, "" if phase == "summary" else "case1",
                           "--", "batch", args[0], "--out", str(rerun_out), *args[1:]],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)
    assert done.returncode == (130 if fault == "SIGINT" else -9), done.stderr
    assert "Traceback" not in done.stderr
    check_published(rerun_out)
    _recover_and_compare(baseline, rerun_out, phase)


def test_a_missing_input_on_rerun_keeps_the_good_outputs(baseline, rerun_out, capsys):
    """The issue's case: a finished case's CT is away during a re-run; its heatmaps and panel stay."""
    manifest, model, first, missing, _ = baseline
    files = sorted(p.name for p in (rerun_out / "case1").iterdir())
    assert batch(missing, rerun_out, model) == 1
    assert "failed case1: FileNotFoundError" in capsys.readouterr().out
    assert sorted(p.name for p in (rerun_out / "case1").iterdir()) == sorted([*files, FAILURE_NAME])
    assert record(rerun_out, "case1") == record(first, "case1")
    summary = {r["case_id"]: r for r in read_summary(rerun_out)}
    assert summary["case1"]["status"] == "failed" and "earlier run are kept" in summary["case1"]["error"]
    check_published(rerun_out)
    _recover_and_compare(baseline, rerun_out, "missing")


@pytest.mark.parametrize("ids, message", [
    (["case0", "summary.csv"], "'summary.csv' would write 'summary.csv', which is the run's own file"),
    (["Summary.CSV"], "which is the run's own file"),
    (["case0", "CASE0"], "which is case 'case0' (line 2)"),
])
def test_case_ids_that_collide_with_run_files_are_refused_up_front(baseline, rerun_out, capsys, ids, message):
    manifest, model, *_ = baseline
    case = read_manifest(manifest)[0]
    rows = [{"case_id": case_id, "ct": str(case.ct), "seg": str(case.seg), "segment": "kidney"} for case_id in ids]
    colliding = write_manifest(rerun_out.parent, rows, "colliding.csv")
    before = {p: p.read_bytes() for p in rerun_out.rglob("*") if p.is_file()}
    assert batch(colliding, rerun_out, model) == 2
    assert message in capsys.readouterr().err
    assert {p: p.read_bytes() for p in rerun_out.rglob("*") if p.is_file()} == before
    with pytest.raises(ManifestError, match="collide"):
        run_batch(read_manifest(colliding), rerun_out, BatchSettings(model=str(model), label_names=PHANTOM_NAMES), progress=False)


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write: read-only permissions, or (as root, who ignores them) one in sysfs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root
        return Path("/sys/fs/seghirescam-test")
    return folder / "out"


def test_an_unwritable_or_file_output_is_refused_before_any_work(baseline, tmp_path, capsys):
    manifest, model, *_ = baseline
    blocked = unwritable_folder(tmp_path)
    assert batch(manifest, blocked, model) == 2
    assert f"--out {blocked}" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    assert batch(manifest, tmp_path / "a-file", model) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text(encoding="utf-8") == "not a folder"
