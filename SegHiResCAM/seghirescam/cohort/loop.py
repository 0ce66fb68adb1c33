"""The one loop over a cohort's cases: skip finished ones, record failures, show progress, stop on Ctrl-C.

``seghirescam batch`` (cases one after another, or as tasks on a Dask cluster) and the Slicer
cohort script (``scripts/slicer_cohort.py``) differ only in what one case does (a ``CaseJob``)
and where it runs (an executor); the rules of a cohort run are here, once:

- a case whose record says "ok" with the same resume key is skipped (``reused`` True);
- an ``Exception`` in a case becomes that case's published "failed" record and the run goes on;
- ``KeyboardInterrupt`` stops the run: the executor cleans up, the caller gets every finished
  case through ``on_result`` before the interrupt reaches it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from tqdm import tqdm

from seghirescam.cohort.manifest import CaseRow

__all__ = ["CaseJob", "Executor", "process_one", "run_locally", "run_cases"]

logger = logging.getLogger(__name__)

Outcome = tuple[CaseRow, "dict | BaseException"]


class CaseJob(Protocol):
    """What one case of a cohort does. Records are dicts with at least ``case_id`` and ``status``
    ("ok" or "failed"; a failed one also ``error`` = {"type", "message"})."""

    def key(self, row: CaseRow) -> str:
        """The case's resume key (contents of its inputs, the model and the settings)."""

    def finished(self, row: CaseRow, key: str) -> dict | None:
        """The record of an earlier run of the case with this key that finished ("ok"), else None."""

    def run(self, row: CaseRow, key: str, started: float) -> dict:
        """Explain the case, publish its outputs and record, and return the record.

        ``started`` is the ``time.perf_counter()`` at which the case began (its key included).
        On any exception nothing of the case may be left published.
        """

    def failed(self, row: CaseRow, error: BaseException, key: str | None, seconds: float) -> dict:
        """Publish a "failed" record for the case (its only output) and return it."""


Executor = Callable[[Sequence[CaseRow], CaseJob], Iterator[Outcome]]


def process_one(job: CaseJob, row: CaseRow) -> dict:
    """One case, resumable and failure-recording: skip it if done, else run it; an ``Exception``
    becomes its "failed" record, ``KeyboardInterrupt`` propagates.

    Returns:
        The case's record plus ``reused``: True if it was skipped.
    """
    started, key = time.perf_counter(), None
    try:
        key = job.key(row)
        previous = job.finished(row, key)
        if previous is not None:
            return {**previous, "reused": True}
        return {**job.run(row, key, started), "reused": False}
    except Exception as error:  # noqa: BLE001 - a case's failure is recorded and the cohort goes on
        logger.debug("case %s failed", row.case_id, exc_info=True)
        return {**job.failed(row, error, key, time.perf_counter() - started), "reused": False}


def run_locally(rows: Sequence[CaseRow], job: CaseJob) -> Iterator[Outcome]:
    """The executor that runs the cases one after another in this process."""
    for row in rows:
        yield row, process_one(job, row)


def run_cases(rows: Sequence[CaseRow], job: CaseJob, *, on_result: Callable[[dict], None] | None = None,
              execute: Executor = run_locally, progress: bool = False,
              log: logging.Logger = logger) -> list[dict]:
    """Run a cohort: every case through ``process_one``, wherever ``execute`` runs it.

    Args:
        rows: The cases, in manifest order.
        job: What one case does.
        on_result: Called in this process with each case's record (plus ``reused``) as it finishes.
        execute: Runs ``process_one(job, row)`` for each row and yields (row, record) as cases
            finish, in any order; it yields (row, exception) for a case it lost (e.g. its worker
            died), which then gets a "failed" record here. Default: ``run_locally``.
        progress: Show a tqdm bar over the cases.
        log: Where skipped and failed cases are reported.

    Returns:
        The records in manifest order.

    Raises:
        KeyboardInterrupt: After ``on_result`` was called for every case that finished; the
            executor has been closed (it cleans up after itself).
    """
    bar = tqdm(total=len(rows), desc="cases", unit="case", position=0, disable=not progress)
    finished: dict[str, dict] = {}
    outcomes = execute(rows, job)
    try:
        with contextlib.closing(outcomes) if hasattr(outcomes, "close") else contextlib.nullcontext():
            for row, outcome in outcomes:
                if isinstance(outcome, BaseException):  # the executor lost the case (e.g. its worker died)
                    outcome = {**job.failed(row, outcome, None, 0.0), "reused": False}
                finished[row.case_id] = outcome
                if outcome.get("reused"):
                    log.info("%s: done earlier, skipped", row.case_id)
                elif outcome["status"] != "ok":
                    error = outcome.get("error") or {}
                    log.warning("case %s failed: %s: %s", row.case_id, error.get("type"), error.get("message"))
                if on_result is not None:
                    on_result(outcome)
                bar.update(1)
                explained = sum(r.get("slices_explained", 0) for r in finished.values() if not r.get("reused"))
                bar.set_postfix(slices=explained, failed=sum(r["status"] != "ok" for r in finished.values()),
                                refresh=False)
    finally:
        bar.close()
    return [finished[row.case_id] for row in rows]
