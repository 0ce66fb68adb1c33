"""What makes a case "done": the resume key (contents of inputs, model and settings) and its record.

A re-run skips a case whose ``OUT/<case_id>/case.json`` has status "ok" and the same key. The
key hashes file contents (a DICOM folder: its sorted file names and contents), never names
or modification times, so moving or touching files does not redo a cohort, and editing one does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from seghirescam.cohort.manifest import CaseRow
from seghirescam.cohort.settings import BatchSettings

__all__ = ["RECORD_FORMAT", "RECORD_NAME", "path_digest", "model_digest", "with_model_digest", "case_key",
           "read_record"]

RECORD_FORMAT = "seghirescam-batch-case/1"
RECORD_NAME = "case.json"


def _file_sha256(path: Path) -> bytes:
    """SHA-256 of one file, read in 1 MiB blocks (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def path_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (streamed), or of a folder's files (sorted relative names and contents).

    Raises:
        FileNotFoundError: If the path does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        digest.update(_file_sha256(file))
    return digest.hexdigest()


def model_digest(weights: str | os.PathLike, card: str | os.PathLike | None) -> str:
    """SHA-256 of a model's weights and card files (a model folder: all its files; no card).

    Raises:
        FileNotFoundError: If either is missing.
    """
    card_digest = path_digest(card) if card is not None else ""
    return hashlib.sha256((path_digest(weights) + card_digest).encode()).hexdigest()


def with_model_digest(settings: BatchSettings) -> BatchSettings:
    """The settings with the model and card as absolute paths and their digest (``model_sha256``),
    computed once per run rather than once per case.

    Raises:
        FileNotFoundError: If the weights or the card are missing.
    """
    model, card = settings.model_path(), settings.card_path()
    return dataclasses.replace(settings, model=str(model), card=str(card) if card is not None else None,
                               model_sha256=model_digest(model, card))


def case_key(row: CaseRow, settings: BatchSettings) -> str:
    """The resume key of a case: inputs' contents, segment, point, target, model and settings.

    Raises:
        FileNotFoundError: If the CT, the label file or the model is missing.
    """
    model = settings.model_sha256 or model_digest(settings.model_path(), settings.card_path())
    payload = {"format": RECORD_FORMAT, "ct": path_digest(row.ct), "seg": path_digest(row.seg),
               "segment": row.segment, "point": row.point, "target_class": row.target_class,
               "model": model, "settings": settings.key_fields()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_record(case_dir: str | os.PathLike) -> dict | None:
    """The case's JSON record, or None if there is none or it cannot be read."""
    try:
        return json.loads((Path(case_dir) / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
