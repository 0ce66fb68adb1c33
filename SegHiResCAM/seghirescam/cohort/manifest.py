"""The cohort manifest: one CSV row per case, checked as a whole before any work starts.

Columns (header required, order free):

- ``case_id``: a folder name for the case's outputs (letters, digits, ``.``, ``_``, ``-``).
- ``ct``: CT file or DICOM folder; ``seg``: label file. Relative paths resolve against the
  manifest's folder.
- ``segment``: label values (``1`` or ``1;2``) or a segment name (``kidney``).
- ``point`` (optional): ``I;J;K`` voxel index of the CT; M is then the in-plane disc of
  ``BatchSettings.point_radius`` pixels around it (``cam.pixel_sets.DEFAULT_POINT_RADIUS``).
- ``target_class`` (optional): class name or index; default: from the segment's name.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CaseRow", "ManifestError", "read_manifest", "check_output_names", "REQUIRED_COLUMNS",
           "OPTIONAL_COLUMNS"]

REQUIRED_COLUMNS = ("case_id", "ct", "seg", "segment")
OPTIONAL_COLUMNS = ("point", "target_class")
_CASE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class ManifestError(ValueError):
    """A manifest that cannot be run; the message lists every problem with its line number."""


@dataclass(frozen=True)
class CaseRow:
    """One case of the manifest.

    Attributes:
        case_id: Folder name of the case's outputs.
        ct: Absolute path of the CT file or DICOM folder.
        seg: Absolute path of the label file.
        segment: The spec as written: label values "1;2" or a name.
        label_values: The label values, when ``segment`` is numeric; else None.
        segment_name: The segment's name, when ``segment`` is not numeric; else None.
        point: (i, j, k) voxel index of the CT, or None.
        target_class: Class name or index as written, or None.
        line: Line number in the manifest (for messages).
    """

    case_id: str
    ct: Path
    seg: Path
    segment: str
    label_values: tuple[int, ...] | None
    segment_name: str | None
    point: tuple[int, int, int] | None
    target_class: str | None
    line: int


def _parse_segment(text: str) -> tuple[tuple[int, ...] | None, str | None]:
    parts = [p.strip() for p in text.split(";")]
    if all(re.fullmatch(r"\d+", p) for p in parts):
        return tuple(int(p) for p in parts), None
    if len(parts) > 1:
        raise ValueError(f"segment {text!r} mixes label values and names; give values (1;2) or one name")
    return None, text


def _parse_point(text: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in text.split(";")]
    if len(parts) != 3 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise ValueError(f"point {text!r} must be three voxel indices I;J;K")
    i, j, k = (int(p) for p in parts)
    return i, j, k


def _resolve(folder: Path, text: str) -> Path:
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else (folder / path).resolve()


def read_manifest(path: str | os.PathLike) -> list[CaseRow]:
    """Read and check a manifest; nothing is run when any row is bad.

    Args:
        path: The CSV file (UTF-8, with a header; blank lines are ignored).

    Returns:
        The cases in file order.

    Raises:
        FileNotFoundError: If the manifest does not exist.
        ManifestError: For missing or unknown columns, empty required fields, bad case ids,
            duplicate case ids, unparsable segment or point; all problems are listed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    folder = path.resolve().parent
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if missing or unknown:
            raise ManifestError(f"{path}: the header must have the columns {', '.join(REQUIRED_COLUMNS)} "
                                f"(optional: {', '.join(OPTIONAL_COLUMNS)}); missing {missing}, unknown {unknown}")
        reader.fieldnames = header
        rows, problems, first_line = [], [], {}
        for record in reader:
            line = reader.line_num
            if None in record:
                problems.append(f"line {line}: more fields than columns")
                continue
            values = {k: (v or "").strip() for k, v in record.items()}
            if not any(values.values()):
                continue
            try:
                rows.append(_row(values, folder, line, first_line))
            except ValueError as error:
                problems.append(f"line {line}: {error}")
    if problems:
        raise ManifestError(f"{path}: {len(problems)} bad row(s), nothing was run:\n  " + "\n  ".join(problems))
    if not rows:
        raise ManifestError(f"{path}: no cases")
    return rows


def check_output_names(rows: Sequence[CaseRow], reserved: Iterable[str],
                       names_of: Callable[[str], Iterable[str]] = lambda case_id: (case_id,)) -> None:
    """Refuse, before any work, case ids whose outputs would land on another case's or on a run's own files.

    Names are compared without regard to case (macOS and Windows folders do not tell ``A`` from ``a``).

    Args:
        rows: The cases.
        reserved: Names the runner itself writes in the output folder (e.g. "summary.csv", ".staging").
        names_of: The names a case writes in the output folder, from its id (default: its folder).

    Raises:
        ManifestError: Listing every collision with the case's manifest line.
    """
    owner: dict[str, str] = {name.lower(): "the run's own file" for name in reserved}
    problems = []
    for row in rows:
        for name in names_of(row.case_id):
            other = owner.setdefault(name.lower(), f"case {row.case_id!r} (line {row.line})")
            if other != f"case {row.case_id!r} (line {row.line})":
                problems.append(f"line {row.line}: case id {row.case_id!r} would write {name!r}, "
                                f"which is {other} in the output folder")
    if problems:
        raise ManifestError(f"{len(problems)} case id(s) collide with other outputs, nothing was run:\n  "
                            + "\n  ".join(problems))


def _row(values: dict[str, str], folder: Path, line: int, first_line: dict[str, int]) -> CaseRow:
    empty = [c for c in REQUIRED_COLUMNS if not values[c]]
    if empty:
        raise ValueError(f"empty {', '.join(empty)}")
    case_id = values["case_id"]
    if not _CASE_ID.match(case_id):
        raise ValueError(f"case id {case_id!r} is not a plain folder name (letters, digits, '.', '_', '-')")
    if case_id in first_line:
        raise ValueError(f"duplicate case id {case_id!r} (first on line {first_line[case_id]})")
    first_line[case_id] = line
    label_values, segment_name = _parse_segment(values["segment"])
    point = _parse_point(values["point"]) if values.get("point") else None
    return CaseRow(case_id, _resolve(folder, values["ct"]), _resolve(folder, values["seg"]), values["segment"],
                   label_values, segment_name, point, values.get("target_class") or None, line)
