"""Cohort runs: a manifest of cases in; per case heatmaps, panel and record; a summary CSV out.

Resumable (finished cases are skipped by key, see ``resume``), failure-tolerant (a failing
case is recorded and the run goes on) and interruptible (Ctrl-C cleans up and writes the
summary of what finished): the rules of ``loop.run_cases``. Cases run one after another here,
or as tasks on a Dask cluster (``dask_executor``).
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from seghirescam.atomic import check_writable_folder, remove_temporaries, write_text_atomic
from seghirescam.cohort.case_runner import STAGING, BatchJob, tidy_staging
from seghirescam.cohort.executors import EXECUTORS
from seghirescam.cohort.loop import run_cases, run_locally
from seghirescam.cohort.manifest import CaseRow, check_output_names, read_manifest
from seghirescam.cohort.resume import with_model_digest
from seghirescam.cohort.settings import BatchSettings

__all__ = ["run_batch", "BatchReport", "BatchSettings", "write_summary", "EXECUTORS", "SUMMARY_NAME", "RUN_FILES"]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
RUN_FILES = (SUMMARY_NAME, STAGING)  # what the run itself writes in OUT: no case id may take these names


@dataclass
class BatchReport:
    """What a cohort run did.

    Attributes:
        records: One record per finished case (ok, reused or failed), in manifest order.
        summary: The summary CSV written.
    """

    records: list[dict]
    summary: Path

    @property
    def failed(self) -> list[str]:
        """Ids of the failed cases."""
        return [r["case_id"] for r in self.records if r["status"] != "ok"]

    @property
    def exit_code(self) -> int:
        """1 if any case failed, else 0 (the command line returns 130 after Ctrl-C)."""
        return 1 if self.failed else 0


def _error_text(record: dict) -> str:
    text = f"{record['error']['type']}: {record['error']['message']}"
    return text + " (the outputs of an earlier run are kept)" if record.get("kept_outputs") else text


def write_summary(out: str | os.PathLike, records: Sequence[dict]) -> Path:
    """Write ``OUT/summary.csv`` atomically: one row per case.

    Columns: case_id, status, reused, seconds, slices_explained, device, target_class, one
    ``mass_inside_m[<method>@<layer>]`` per map, error (saying so when a failed case's earlier outputs were kept).

    Returns:
        The path written.
    """
    out = Path(out)
    maps = list(dict.fromkeys(name for r in records for name in r.get("map_statistics", {})))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "status", "reused", "seconds", "slices_explained", "device", "target_class",
                     *(f"mass_inside_m[{name}]" for name in maps), "error"])
    for r in records:
        stats = r.get("map_statistics", {})
        error = r.get("error") or {}
        writer.writerow([r["case_id"], r["status"], "yes" if r.get("reused") else "no", r.get("seconds", ""),
                         r.get("slices_explained", ""), r.get("device") or "", r.get("target_class_name", ""),
                         *(stats.get(name, {}).get("mass_inside_m", "") for name in maps),
                         _error_text(r) if error else ""])
    return write_text_atomic(out / SUMMARY_NAME, buffer.getvalue(), newline="")


def _recover(out: Path) -> None:
    """Undo what an earlier, killed run left (one run per output folder at a time): case folders it had
    moved aside come back, half-written staged cases and temporary files go."""
    tidy_staging(out, clear=True)
    for folder in (out, *(p for p in out.iterdir() if p.is_dir())):
        for path in remove_temporaries(folder):
            logger.info("removed %s, left by an interrupted run", path)


def run_batch(manifest: str | os.PathLike | Sequence[CaseRow], out: str | os.PathLike,
              settings: BatchSettings = BatchSettings(), *, executor: str = "local", scheduler: str | None = None,
              workers: int | None = None, progress: bool = True) -> BatchReport:
    """Explain every case of a manifest; skip finished ones; record failures and go on.

    Args:
        manifest: The manifest CSV (see ``seghirescam.cohort.manifest``) or its parsed rows.
        out: The output folder: ``OUT/<case_id>/`` per case and ``OUT/summary.csv``.
        settings: Model, methods, layers, device and output options.
        executor: "local" (one case after another in this process) or "dask".
        scheduler: Address of a running Dask scheduler (executor "dask").
        workers: Start a local Dask cluster of this many single-threaded worker processes
            (executor "dask" without ``scheduler``; default 1).
        progress: Show tqdm bars over cases (and slices, for the local executor).

    Returns:
        The report; ``report.exit_code`` is 0 when every case is ok, 1 when any failed.

    Raises:
        FileNotFoundError: If the manifest or the model is missing (before any work).
        CardError: If the model cannot be loaded (local executor: it is loaded once, before any case).
        ManifestError: For bad manifest rows (before any work).
        ManifestError: For case ids that would write onto the run's own files or each other's
            (``RUN_FILES``; names compared without regard to case), before any work.
        ValueError: For an unknown executor or conflicting options.
        OSError: If the output folder cannot be written (a file, no permission, a full disk), before any work.
        KeyboardInterrupt: After cleaning up and writing the summary of the finished cases.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {tuple(EXECUTORS)}, got {executor!r}")
    if executor == "local" and (scheduler or workers):
        raise ValueError("--scheduler and --workers need --executor dask")
    if scheduler and workers:
        raise ValueError("give either --scheduler (an existing cluster) or --workers (a local one), not both")
    rows = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    check_output_names(rows, RUN_FILES)
    settings = with_model_digest(settings)
    out = check_writable_folder(out)
    _recover(out)
    if executor == "dask":
        from seghirescam.cohort.dask_executor import run_on_dask

        job = BatchJob(settings, out)  # each worker loads the model once
        execute = functools.partial(run_on_dask, scheduler=scheduler, workers=workers)
    else:
        job = BatchJob(settings, out, settings.load_model(), slice_bars=progress)  # the model, once per run
        execute = run_locally
    finished: dict[str, dict] = {}
    try:
        with logging_redirect_tqdm():
            records = run_cases(rows, job, on_result=lambda r: finished.__setitem__(r["case_id"], r),
                                execute=execute, progress=progress)
    except KeyboardInterrupt:
        tidy_staging(out, clear=False)
        summary = write_summary(out, [finished[row.case_id] for row in rows if row.case_id in finished])
        logger.warning("interrupted: %d of %d cases finished; summary in %s", len(finished), len(rows), summary)
        raise
    tidy_staging(out, clear=False)
    report = BatchReport(records, write_summary(out, records))
    logger.info("%d cases: %d ok, %d failed", len(records), len(records) - len(report.failed), len(report.failed))
    return report
