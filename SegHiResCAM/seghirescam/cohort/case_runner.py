"""One case of a cohort run: explanation, outputs published all at once, or a failure record.

A case's outputs are written into ``OUT/.staging/<case_id>-<random>/`` (each file itself via
a temporary name and a rename), the JSON record last, and the folder is then renamed to
``OUT/<case_id>/``. A crash or Ctrl-C mid-case therefore leaves no partial case folder and no
"ok" record. A finished case is skipped when its record has status "ok" and the same key
(``resume``).
Arrays are in the CT's (k, j, i) order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from seghirescam.ct.case_outputs import write_case_outputs
from seghirescam.ct.cases import prepare_case
from seghirescam.cam.engine import DEFAULT_METHODS
from seghirescam.cohort.manifest import CaseRow
from seghirescam.models.loading import LoadedModel, card_path_for, default_model_path, load_model
from seghirescam.ct.outputs import write_json
from seghirescam.ct.pipeline import explain_ct
from seghirescam.cohort.resume import RECORD_FORMAT, RECORD_NAME, case_key, read_record

__all__ = ["BatchSettings", "STAGING", "process_case", "record_failure"]

logger = logging.getLogger(__name__)

STAGING = ".staging"
_MODELS: dict[tuple[str, str, int], LoadedModel] = {}  # per process (each Dask worker loads a model once)


@dataclass(frozen=True)
class BatchSettings:
    """Settings of a cohort run (picklable: they travel to Dask workers).

    Attributes:
        model, card: Weights file and card (None: the shipped default / ``<model>.card.json``).
        methods, layers: What to explain (layers None: the deepest, usually "bottleneck").
        device: "auto", "cpu", "cuda", "cuda:N" ("auto" on a Dask worker: its pinned GPU).
        batch_size: Slices per batch or "auto".
        normalize: "volume", "slice" or "none".
        extension: Heatmap file format: ".nrrd", ".nii.gz" or ".mha".
        map_dtype: "float32" or "float16" (maps held in memory; files are float32).
        figure: Whether to write the PNG panel.
        label_names: Label value -> name for segment names (None: the card's classes).
        point_radius: In-plane disc radius (pixels) around a manifest point.
        model_sha256: Digest of weights and card (filled in by ``run_batch``).
    """

    model: str | None = None
    card: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    layers: tuple[str, ...] | None = None
    device: str = "auto"
    batch_size: int | str = "auto"
    normalize: str = "volume"
    extension: str = ".nrrd"
    map_dtype: str = "float32"
    figure: bool = True
    label_names: dict[int, str] | None = field(default=None, hash=False)
    point_radius: int = 0
    model_sha256: str = ""

    def model_path(self) -> Path:
        """The weights file (the shipped default when ``model`` is None)."""
        return Path(self.model).resolve() if self.model else default_model_path()

    def card_path(self) -> Path:
        """The card file."""
        return Path(self.card).resolve() if self.card else card_path_for(self.model_path())

    def key_fields(self) -> dict:
        """The settings that change the outputs: all but device and batch size (slices are
        independent in eval mode, so neither changes what is computed)."""
        data = dataclasses.asdict(self)
        for name in ("device", "batch_size", "model", "card", "model_sha256"):
            data.pop(name)
        data["label_names"] = sorted((int(k), v) for k, v in (self.label_names or {}).items())
        return data


def _model(settings: BatchSettings) -> LoadedModel:
    path, card = settings.model_path(), settings.card_path()
    cache_key = (str(path), str(card), path.stat().st_mtime_ns)
    if cache_key not in _MODELS:
        _MODELS[cache_key] = load_model(path, card)
    return _MODELS[cache_key]


def _base(row: CaseRow, settings: BatchSettings) -> dict:
    return {"format": RECORD_FORMAT, "case_id": row.case_id, "ct": str(row.ct), "seg": str(row.seg),
            "segment": row.segment, "point": list(row.point) if row.point else None,
            "target_class_requested": row.target_class, "model": str(settings.model_path()),
            "model_sha256": settings.model_sha256, "settings": settings.key_fields()}


def _explain(row: CaseRow, settings: BatchSettings, folder: Path, device: str,
             progress: Callable[[int, int], None] | None) -> dict:
    loaded = _model(settings)
    case = prepare_case(row.ct, row.seg, loaded, label_values=row.label_values, segment_name=row.segment_name,
                        label_names=settings.label_names, target_class=row.target_class,
                        pixel_set="point" if row.point else "segment", point=row.point,
                        point_radius=settings.point_radius, device=device)
    result = explain_ct(case.ct, case.mask, loaded, case.target_class, layers=settings.layers,
                        methods=settings.methods, device=device, batch_size=settings.batch_size,
                        normalize=settings.normalize, progress=progress, map_dtype=np.dtype(settings.map_dtype))
    target, shape = re.sub(r"[^A-Za-z0-9._-]+", "_", case.segment_name), list(case.ct.array.shape)
    written = write_case_outputs(folder, case, result, target, extension=settings.extension,
                                 figure=settings.figure)
    return {**written, "files": {name: Path(p).name for name, p in written["files"].items()},
            "target_class": case.target_class, "target_class_name": loaded.card.classes[case.target_class],
            "segment_name": case.segment_name, "label_values": case.label_values,
            "pixel_set": "point" if row.point else "segment", "slice_indices": list(result.slices_explained),
            "shape_kji": shape, "explain_seconds": round(result.seconds, 3)}


def _publish(out: Path, case_id: str, folder: Path, record: dict) -> None:
    """Write the record last, then swap the staged folder in for ``OUT/<case_id>``."""
    write_json(folder / RECORD_NAME, record)
    final, old = out / case_id, out / STAGING / f"{case_id}-old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.rename(final, old)
    os.rename(folder, final)
    shutil.rmtree(old, ignore_errors=True)


def _staging(out: Path, case_id: str) -> Path:
    folder = out / STAGING / f"{case_id}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return folder


def record_failure(row: CaseRow, settings: BatchSettings, out: str | os.PathLike, error: BaseException,
                   key: str | None = None, seconds: float = 0.0) -> dict:
    """Publish a "failed" record (error type and message) as the case's only output.

    Returns:
        The record, with ``reused`` False.
    """
    out = Path(out)
    record = {**_base(row, settings), "status": "failed", "key": key, "device": None, "seconds": round(seconds, 3),
              "error": {"type": type(error).__name__, "message": str(error)},
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _publish(out, row.case_id, _staging(out, row.case_id), record)
    return {**record, "reused": False}


def process_case(row: CaseRow, settings: BatchSettings, out: str | os.PathLike, *, device: str | None = None,
                 progress: Callable[[int, int], None] | None = None, worker: str | None = None) -> dict:
    """Explain one case into ``OUT/<case_id>/``, or skip it when it is already done.

    Any ``Exception`` (unreadable file, grids that do not overlap, empty segment, NaNs, ...)
    becomes a published "failed" record; a ``KeyboardInterrupt`` removes the staged files
    and propagates.

    Args:
        row: The case.
        settings: The run's settings.
        out: The cohort's output folder.
        device: Overrides ``settings.device`` (a Dask worker's pinned GPU).
        progress: Called as progress(done, total) over the case's slices.
        worker: Name of the Dask worker running the case (stored in the record).

    Returns:
        The case's record (as written to ``case.json``) plus ``reused``: True if it was skipped.
    """
    started, out, key, folder = time.perf_counter(), Path(out), None, None
    try:
        key = case_key(row, settings)
        previous = read_record(out / row.case_id)
        if previous and previous.get("status") == "ok" and previous.get("key") == key:
            return {**previous, "reused": True}
        folder = _staging(out, row.case_id)
        details = _explain(row, settings, folder, device or settings.device, progress)
        record = {**_base(row, settings), **details, "status": "ok", "key": key,
                  "seconds": round(time.perf_counter() - started, 3), "worker": worker,
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        _publish(out, row.case_id, folder, record)
        return {**record, "reused": False}
    except Exception as error:  # noqa: BLE001 - a case's failure is recorded and the cohort goes on
        logger.warning("case %s failed: %s: %s", row.case_id, type(error).__name__, error,
                       exc_info=logger.isEnabledFor(logging.DEBUG))
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return record_failure(row, settings, out, error, key, time.perf_counter() - started)
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
