"""One case of a cohort run: explanation, outputs published all at once, or a failure record.

A case's outputs are written into ``OUT/.staging/<case_id>-<random>/`` (each file itself via
a temporary name and a rename), the JSON record last, and the folder is then renamed to
``OUT/<case_id>/``. A crash or Ctrl-C mid-case therefore leaves no partial case folder and no
"ok" record. A finished case is skipped when its record has status "ok" and the same key
(``resume``).
Arrays are in the CT's (k, j, i) order.
"""

from __future__ import annotations

import functools
import logging
import os
import re
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

__all__ = ["BatchJob", "STAGING", "process_case"]

logger = logging.getLogger(__name__)

STAGING = ".staging"


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
                        point_radius=settings.point_radius, device=device)
    result = explain_ct(case.ct, case.mask, loaded, case.target_class, layers=settings.layers,
                        methods=settings.methods, device=device, batch_size=settings.batch_size,
                        normalize=settings.normalize, progress=progress, map_dtype=np.dtype(settings.map_dtype),
                        autocast=None if settings.precision == DEFAULT_PRECISION else settings.precision)
    target, shape = re.sub(r"[^A-Za-z0-9._-]+", "_", case.segment_name), list(case.ct.array.shape)
    written = write_case_outputs(folder, case, result, target, extension=settings.extension,
                                 figure=settings.figure)
    return {**written, "files": {name: Path(p).name for name, p in written["files"].items()},
            "target_class": case.target_class, "target_class_name": loaded.class_names[case.target_class],
            "segment_name": case.segment_name, "label_values": case.label_values,
            "pixel_set": "point" if row.point else "segment", "slice_indices": list(result.slices_explained),
            "shape_kji": shape, "explain_seconds": round(result.seconds, 3)}


def _publish(out: Path, case_id: str, folder: Path, record: dict) -> None:
    """Write the record last, then swap the staged folder in for ``OUT/<case_id>``."""
    write_json_atomic(folder / RECORD_NAME, record)
    final, old = out / case_id, out / STAGING / f"{case_id}-old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.rename(final, old)
    os.rename(folder, final)
    shutil.rmtree(old, ignore_errors=True)


def _staging(out: Path, case_id: str) -> Path:
    folder = out / STAGING / f"{case_id}-{uuid.uuid4().hex[:8]}"
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
        """``OUT/<case_id>/case.json`` if it says "ok" with this key."""
        previous = read_record(self.out / row.case_id)
        return previous if previous and previous.get("status") == "ok" and previous.get("key") == key else None

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
        """Publish a "failed" record (error type and message) as the case's only output."""
        record = {**_base(row, self.settings), "status": "failed", "key": key, "device": None,
                  "seconds": round(seconds, 3), "error": {"type": type(error).__name__, "message": str(error)},
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
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
