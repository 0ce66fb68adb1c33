"""One case of a cohort run: explanation, outputs published all at once, or a failure record.

A case's outputs are written into ``OUT/.staging/<random>-<case_id>/`` (each file itself via
a temporary name and a rename), the JSON record last, and the folder is then renamed to
``OUT/<case_id>/``. A crash or Ctrl-C mid-case therefore leaves no partial case folder and no
"ok" record. An earlier folder of the case is first moved aside to ``OUT/.staging/old-<random>/``
and deleted only once the new one is in place; a run killed between the two renames leaves it
there, and the next run puts it back (``restore_moved_aside``).

A failing re-run never deletes good outputs: when ``OUT/<case_id>/`` holds an "ok" record, it is
kept as it is and the failure is written beside it as ``last_failure.json``; the record of the
run says "failed" and names the kept outputs. A later run whose inputs are back as they were
reuses the kept outputs (the resume key matches) and removes ``last_failure.json``.
A finished case is skipped when its record has status "ok" and the same key (``resume``).
Arrays are in the CT's (k, j, i) order.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seghirescam.atomic import write_json_atomic
from seghirescam.cam.vocabulary import DEFAULT_PRECISION
from seghirescam.cohort.loop import process_one
from seghirescam.cohort.manifest import CaseRow
from seghirescam.cohort.resume import RECORD_FORMAT, RECORD_NAME, case_key, read_record
from seghirescam.cohort.settings import BatchSettings
from seghirescam.ct.cases import prepare_case
from seghirescam.ct.outputs import write_case_outputs
from seghirescam.ct.pipeline import explain_ct
from seghirescam.models.explainable import ExplainableModel

__all__ = ["BatchJob", "STAGING", "FAILURE_NAME", "process_case", "restore_moved_aside", "tidy_staging"]

logger = logging.getLogger(__name__)

STAGING = ".staging"
FAILURE_NAME = "last_failure.json"  # beside kept outputs: the newest run of the case failed
_MOVED_ASIDE = "old-"  # OUT/.staging/old-<random>/<case_id>: an earlier folder of a case, being replaced


@functools.lru_cache(maxsize=1)
def _process_model(settings: BatchSettings, modified_ns: int) -> ExplainableModel:
    """The model of this process's cases (a Dask worker loads it once; one model at a time is kept)."""
    return settings.load_model()


class _SliceBar:
    """A second tqdm bar over one case's slices, fed by the engine's progress callback."""

    def __init__(self, case_id: str) -> None:
        self.bar = tqdm(desc=case_id, unit="slice", leave=False, position=1)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _base(row: CaseRow, settings: BatchSettings) -> dict:
    return {"format": RECORD_FORMAT, "case_id": row.case_id, "ct": str(row.ct), "seg": str(row.seg),
            "segment": row.segment, "point": list(row.point) if row.point else None,
            "target_class_requested": row.target_class, "model": str(settings.model_path()),
            "model_sha256": settings.model_sha256, "settings": settings.key_fields()}


def _explain(row: CaseRow, settings: BatchSettings, loaded: ExplainableModel, folder: Path, device: str,
             progress: Callable[[int, int], None] | None) -> dict:
    case = prepare_case(row.ct, row.seg, loaded, label_values=row.label_values, segment_name=row.segment_name,
                        label_names=settings.label_names, target_class=row.target_class,
                        pixel_set="point" if row.point else "segment", point=row.point,
                        point_radius=settings.point_radius, device=device,
                        allow_irregular_slices=settings.allow_irregular_slices)
    result = explain_ct(case.ct, case.mask, loaded, case.target_class, layers=settings.layers,
                        methods=settings.methods, device=device, batch_size=settings.batch_size,
                        normalize=settings.normalize, progress=progress, map_dtype=np.dtype(settings.map_dtype),
                        autocast=None if settings.precision == DEFAULT_PRECISION else settings.precision)
    shape = list(case.ct.array.shape)
    written = write_case_outputs(folder, case, result, extension=settings.extension, figure=settings.figure)
    return {**written, "files": {name: Path(p).name for name, p in written["files"].items()},
            "target_class": case.target_class, "target_class_name": loaded.class_names[case.target_class],
            "segment_name": case.segment_name, "label_values": case.label_values,
            "pixel_set": "point" if row.point else "segment", "slice_indices": list(result.slices_explained),
            "shape_kji": shape, "explain_seconds": round(result.seconds, 3)}


def _publish(out: Path, case_id: str, folder: Path, record: dict) -> None:
    """Write the record last, then swap the staged folder in for ``OUT/<case_id>``.

    The earlier folder is moved aside first and deleted last; if the process dies in between,
    ``restore_moved_aside`` puts it back at the next run.
    """
    write_json_atomic(folder / RECORD_NAME, record)
    final, holder = out / case_id, out / STAGING / f"{_MOVED_ASIDE}{uuid.uuid4().hex[:8]}"
    if final.exists():
        holder.mkdir()
        os.rename(final, holder / case_id)
    try:
        os.rename(folder, final)
    except BaseException:  # e.g. Ctrl-C or a full disk: the earlier folder goes back at once
        if (holder / case_id).exists() and not final.exists():
            os.rename(holder / case_id, final)
        raise
    shutil.rmtree(holder, ignore_errors=True)


def restore_moved_aside(out: str | os.PathLike) -> list[str]:
    """Put back the case folders a killed run had moved aside but not yet replaced.

    Args:
        out: The cohort's output folder.

    Returns:
        The ids of the cases restored.
    """
    restored = []
    for holder in sorted((Path(out) / STAGING).glob(f"{_MOVED_ASIDE}*")):
        for folder in holder.iterdir():
            if not (Path(out) / folder.name).exists():
                os.rename(folder, Path(out) / folder.name)
                restored.append(folder.name)
                logger.warning("%s: restored the outputs of an earlier run that was stopped while replacing them",
                               folder.name)
    return restored


def tidy_staging(out: str | os.PathLike, *, clear: bool) -> None:
    """Restore moved-aside case folders, then remove the staging folder (``clear``: with whatever a
    killed run left half-written; else only when it is empty, as a case may still be written elsewhere).

    Only one run may use an output folder at a time.
    """
    staging = Path(out) / STAGING
    if not staging.exists():
        return
    restore_moved_aside(out)
    if clear:
        shutil.rmtree(staging, ignore_errors=True)
        return
    for holder in staging.glob(f"{_MOVED_ASIDE}*"):
        with contextlib.suppress(OSError):
            holder.rmdir()  # emptied by the restore
    with contextlib.suppress(OSError):
        staging.rmdir()


def _staging(out: Path, case_id: str) -> Path:
    folder = out / STAGING / f"{uuid.uuid4().hex[:8]}-{case_id}"
    folder.mkdir(parents=True)
    return folder


@dataclass(frozen=True)
class BatchJob:
    """A case of ``seghirescam batch`` (a ``loop.CaseJob``): explained into ``OUT/<case_id>/``.

    Picklable when ``loaded`` is None: it travels to Dask workers, which load the model themselves.

    Attributes:
        settings: The run's settings.
        out: The cohort's output folder.
        loaded: The model, loaded once for the run; None: loaded once per process.
        device: Overrides ``settings.device`` (a Dask worker's pinned GPU).
        worker: Name of the Dask worker running the case (stored in the record).
        slice_bars: Show a tqdm bar over each case's slices.
        progress: Called as progress(done, total) over a case's slices (without ``slice_bars``).
    """

    settings: BatchSettings
    out: Path
    loaded: ExplainableModel | None = None
    device: str | None = None
    worker: str | None = None
    slice_bars: bool = False
    progress: Callable[[int, int], None] | None = None

    def model(self) -> ExplainableModel:
        """The model: the run's, else this process's (loaded on first use)."""
        if self.loaded is not None:
            return self.loaded
        return _process_model(self.settings, self.settings.model_path().stat().st_mtime_ns)

    def key(self, row: CaseRow) -> str:
        """The resume key (``resume.case_key``)."""
        return case_key(row, self.settings)

    def finished(self, row: CaseRow, key: str) -> dict | None:
        """``OUT/<case_id>/case.json`` if it says "ok" with this key (a ``last_failure.json`` beside it,
        from a run whose inputs were not as they are now, is then removed)."""
        previous = read_record(self.out / row.case_id)
        if not (previous and previous.get("status") == "ok" and previous.get("key") == key):
            return None
        stale = self.out / row.case_id / FAILURE_NAME
        if stale.exists():
            stale.unlink()
            logger.info("%s: the kept outputs match the inputs again; %s removed", row.case_id, FAILURE_NAME)
        return previous

    def run(self, row: CaseRow, key: str, started: float) -> dict:
        """Explain into a staged folder, write the record last, publish the folder; on any exception
        (``KeyboardInterrupt`` included) the staged files are removed."""
        folder = _staging(self.out, row.case_id)
        bar = _SliceBar(row.case_id) if self.slice_bars else None
        try:
            details = _explain(row, self.settings, self.model(), folder, self.device or self.settings.device,
                               bar or self.progress)
            record = {**_base(row, self.settings), **details, "status": "ok", "key": key,
                      "seconds": round(time.perf_counter() - started, 3), "worker": self.worker,
                      "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            _publish(self.out, row.case_id, folder, record)
            return record
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            if bar is not None:
                bar.close()

    def failed(self, row: CaseRow, error: BaseException, key: str | None, seconds: float) -> dict:
        """Record a failure: beside the case's earlier good outputs, which are kept (``last_failure.json``),
        else as the case's only output (``case.json``)."""
        record = {**_base(row, self.settings), "status": "failed", "key": key, "device": None,
                  "seconds": round(seconds, 3), "error": {"type": type(error).__name__, "message": str(error)},
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        previous = read_record(self.out / row.case_id)
        if previous and previous.get("status") == "ok":
            record["kept_outputs"] = {"record": f"{row.case_id}/{RECORD_NAME}", "finished": previous.get("finished"),
                                      "key": previous.get("key")}
            write_json_atomic(self.out / row.case_id / FAILURE_NAME, record)
            logger.warning("%s failed; the outputs of its earlier run are kept (%s)", row.case_id, FAILURE_NAME)
        else:
            _publish(self.out, row.case_id, _staging(self.out, row.case_id), record)
        return record


def process_case(row: CaseRow, settings: BatchSettings, out: str | os.PathLike, *, loaded: ExplainableModel | None = None,
                 device: str | None = None, progress: Callable[[int, int], None] | None = None,
                 worker: str | None = None) -> dict:
    """Explain one case into ``OUT/<case_id>/``, or skip it when it is already done (``loop.process_one``).

    Any ``Exception`` (unreadable file, grids that do not overlap, empty segment, NaNs, ...)
    becomes a published "failed" record; a ``KeyboardInterrupt`` removes the staged files
    and propagates.

    Args:
        row: The case.
        settings: The run's settings.
        out: The cohort's output folder.
        loaded: The model (default: loaded from ``settings``, once per process).
        device: Overrides ``settings.device``.
        progress: Called as progress(done, total) over the case's slices.
        worker: Name of the Dask worker running the case (stored in the record).

    Returns:
        The case's record (as written to ``case.json``) plus ``reused``: True if it was skipped.
    """
    return process_one(BatchJob(settings, Path(out), loaded, device, worker, progress=progress), row)
