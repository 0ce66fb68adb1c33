"""The one cohort loop: resume, failure records, lost tasks and Ctrl-C, with a job that only keeps notes."""

from __future__ import annotations

from pathlib import Path

import pytest

from seghirescam.cohort.loop import run_cases
from seghirescam.cohort.manifest import CaseRow


def _row(case_id: str) -> CaseRow:
    return CaseRow(case_id, Path(f"{case_id}.nii.gz"), Path("seg.nii.gz"), "1", (1,), None, None, None, 2)


class NotesJob:
    """Cases "done" are finished already; "bad" raises; "stop" is interrupted."""

    def __init__(self) -> None:
        self.published: dict[str, dict] = {}

    def key(self, row):
        return f"key-{row.case_id}"

    def finished(self, row, key):
        return {"case_id": row.case_id, "status": "ok", "key": key} if row.case_id == "done" else None

    def run(self, row, key, started):
        if row.case_id == "bad":
            raise ValueError("the segment is empty")
        if row.case_id == "stop":
            raise KeyboardInterrupt
        self.published[row.case_id] = {"case_id": row.case_id, "status": "ok", "key": key, "slices_explained": 3}
        return self.published[row.case_id]

    def failed(self, row, error, key, seconds):
        self.published[row.case_id] = {"case_id": row.case_id, "status": "failed", "key": key,
                                       "error": {"type": type(error).__name__, "message": str(error)}}
        return self.published[row.case_id]


def test_skips_finished_cases_records_failures_and_keeps_manifest_order(caplog):
    job, seen = NotesJob(), []
    records = run_cases([_row("new"), _row("done"), _row("bad")], job, on_result=lambda r: seen.append(r["case_id"]))
    assert [(r["case_id"], r["status"], r["reused"]) for r in records] == [
        ("new", "ok", False), ("done", "ok", True), ("bad", "failed", False)]
    assert records[2]["error"] == {"type": "ValueError", "message": "the segment is empty"}
    assert records[2]["key"] == "key-bad" and set(job.published) == {"new", "bad"}
    assert seen == ["new", "done", "bad"] and "case bad failed: ValueError" in caplog.text


def test_a_task_the_executor_lost_becomes_a_failure_record():
    def lost(rows, job):
        for row in rows:
            yield row, ConnectionError("worker died")

    records = run_cases([_row("a")], NotesJob(), execute=lost)
    assert records[0]["status"] == "failed" and records[0]["key"] is None and records[0]["reused"] is False


def test_ctrl_c_reports_what_finished_and_closes_the_executor():
    closed, seen = [], []

    def executor(rows, job):
        from seghirescam.cohort.loop import process_one

        try:
            for row in rows:
                yield row, process_one(job, row)
        finally:
            closed.append(True)

    with pytest.raises(KeyboardInterrupt):
        run_cases([_row("a"), _row("stop"), _row("b")], NotesJob(), execute=executor,
                  on_result=lambda r: seen.append(r["case_id"]))
    assert seen == ["a"] and closed == [True]
