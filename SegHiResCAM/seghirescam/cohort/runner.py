"""Cohort runs: a manifest of cases in; per case heatmaps, panel and record; a summary CSV out.

Resumable (finished cases are skipped by key, see ``batch_case``), failure-tolerant (a failing
case is recorded and the run goes on) and interruptible (Ctrl-C cleans up and writes the
summary of what finished). Cases run one after another here, or as tasks on a Dask cluster
(``dask_executor``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from seghirescam.cohort.case_runner import STAGING, BatchSettings, process_case
from seghirescam.cohort.manifest import CaseRow, read_manifest
from seghirescam.cohort.resume import model_digest

__all__ = ["run_batch", "BatchReport", "BatchSettings", "write_summary", "EXECUTORS", "SUMMARY_NAME"]

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "dask")
SUMMARY_NAME = "summary.csv"


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


class _SliceBar:
    """A second tqdm bar over one case's slices, fed by the engine's progress callback."""

    def __init__(self, case_id: str, enabled: bool) -> None:
        self.bar = tqdm(desc=case_id, unit="slice", leave=False, position=1, disable=not enabled)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def write_summary(out: str | os.PathLike, records: Sequence[dict]) -> Path:
    """Write ``OUT/summary.csv`` atomically: one row per case.

    Columns: case_id, status, reused, seconds, slices_explained, device, target_class, one
    ``mass_inside_m[<method>@<layer>]`` per map, error.

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
                         f"{error['type']}: {error['message']}" if error else ""])
    path, temporary = out / SUMMARY_NAME, out / f".{SUMMARY_NAME}.tmp"
    temporary.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(temporary, path)
    return path


def _remove_empty_staging(out: Path) -> None:
    with contextlib.suppress(OSError):
        (out / STAGING).rmdir()  # empty unless a case is still being written elsewhere


def _clear_staging(out: Path) -> None:
    """Remove what an earlier, killed run left half-written (one run per output folder at a time)."""
    shutil.rmtree(out / STAGING, ignore_errors=True)


def _execute(rows: Sequence[CaseRow], settings: BatchSettings, out: Path, on_result: Callable[[dict], None],
             executor: str, scheduler: str | None, workers: int | None, progress: bool) -> None:
    if executor == "dask":
        from seghirescam.cohort.dask_executor import run_on_dask

        run_on_dask(rows, settings, out, on_result, scheduler=scheduler, workers=workers)
        return
    for row in rows:
        slices = _SliceBar(row.case_id, progress)
        try:
            on_result(process_case(row, settings, out, progress=slices))
        finally:
            slices.close()


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
        ManifestError: For bad manifest rows (before any work).
        ValueError: For an unknown executor or conflicting options.
        KeyboardInterrupt: After cleaning up and writing the summary of the finished cases.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if executor == "local" and (scheduler or workers):
        raise ValueError("--scheduler and --workers need --executor dask")
    if scheduler and workers:
        raise ValueError("give either --scheduler (an existing cluster) or --workers (a local one), not both")
    rows = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    settings = dataclasses.replace(settings, model=str(settings.model_path()), card=str(settings.card_path()),
                                   model_sha256=model_digest(settings.model_path(), settings.card_path()))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_staging(out)
    finished: dict[str, dict] = {}
    bar = tqdm(total=len(rows), desc="cases", unit="case", position=0, disable=not progress)

    def on_result(record: dict) -> None:
        finished[record["case_id"]] = record
        bar.update(1)
        explained = sum(r.get("slices_explained", 0) for r in finished.values() if not r.get("reused"))
        bar.set_postfix(slices=explained, failed=sum(r["status"] != "ok" for r in finished.values()), refresh=False)

    order = [row.case_id for row in rows]
    try:
        with logging_redirect_tqdm():
            _execute(rows, settings, out, on_result, executor, scheduler, workers, progress)
    except KeyboardInterrupt:
        bar.close()
        _remove_empty_staging(out)
        summary = write_summary(out, [finished[c] for c in order if c in finished])
        logger.warning("interrupted: %d of %d cases finished; summary in %s", len(finished), len(rows), summary)
        raise
    bar.close()
    _remove_empty_staging(out)
    records = [finished[c] for c in order]
    report = BatchReport(records, write_summary(out, records))
    logger.info("%d cases: %d ok, %d failed", len(records), len(records) - len(report.failed), len(report.failed))
    return report
