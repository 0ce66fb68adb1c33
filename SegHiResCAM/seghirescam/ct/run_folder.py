"""The output folder of one ``seghirescam explain`` or ``demo`` run: checked first, written whole, or left as it was.

A run owns its folder. Before any work the folder is created if needed and proven writable,
temporary files a killed run left there are removed, and a folder holding anything (the results
of another run, or other files) is refused unless the run was asked to overwrite. The run then
writes everything into a hidden staging folder ``OUT/.tmp-<random>/`` and publishes it at the end:
the previous run's files (those its ``summary.json`` lists) are moved aside, the new files moved
in, ``summary.json`` last, and the old files deleted. Ctrl-C or an error before that leaves the
folder as it was (the staging folder is removed); a SIGKILL leaves a ``.tmp-*`` folder that the
next run removes. Other files in the folder are never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from seghirescam.atomic import TEMPORARY_PREFIX, check_writable_folder, is_temporary, remove_temporaries, write_json_atomic

__all__ = ["RunFolder", "SUMMARY_NAME", "listed_files"]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"


def listed_files(summary: object) -> set[str]:
    """File names a run's summary lists: every string under a "files" key, anywhere in it, by base name."""
    names: set[str] = set()
    if isinstance(summary, dict):
        for key, value in summary.items():
            if key == "files" and isinstance(value, dict):
                names.update(Path(v).name for v in value.values() if isinstance(v, str))
            else:
                names |= listed_files(value)
    elif isinstance(summary, list):
        for value in summary:
            names |= listed_files(value)
    return names


def _relocated(value: object, staging: str, final: str) -> object:
    """``value`` with every string path under ``staging`` moved to ``final``."""
    if isinstance(value, dict):
        return {key: _relocated(item, staging, final) for key, item in value.items()}
    if isinstance(value, list):
        return [_relocated(item, staging, final) for item in value]
    if isinstance(value, str) and (value == staging or value.startswith(staging + os.sep)):
        return final + value[len(staging):]
    return value


class RunFolder:
    """A run's output folder (a context manager): write into ``staging``, then ``publish``.

    Args:
        out: The output folder (``--out``).
        overwrite: Replace the results of an earlier run (``--overwrite``).

    Raises:
        NotADirectoryError: If ``out`` is a file.
        PermissionError, OSError: If it cannot be created or written.
        FileExistsError: If it is not empty and ``overwrite`` is False (the message says what is there).
    """

    def __init__(self, out: str | os.PathLike, *, overwrite: bool = False) -> None:
        self.created = not Path(out).exists()
        self.out = check_writable_folder(out)
        for path in remove_temporaries(self.out):
            logger.warning("removed %s, left by an interrupted run", path)
        present = sorted(p.name for p in self.out.iterdir() if not is_temporary(p))
        if present and not overwrite:
            what = ("the results of another run (summary.json)" if SUMMARY_NAME in present else
                    f"{len(present)} other file(s), e.g. {', '.join(present[:3])}")
            raise FileExistsError(f"--out {self.out} already holds {what}; choose an empty folder, or add "
                                  "--overwrite to replace the earlier results")
        self.staging = self.out / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}"
        self.staging.mkdir()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)  # published: empty; else what the run half-wrote
        if error is not None and self.created:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # the run made the folder and failed: not even an empty folder stays

    def _previous(self) -> list[Path]:
        """The files of the earlier run in the folder: its summary's files and the summary, summary first."""
        summary = self.out / SUMMARY_NAME
        if not summary.exists():
            return []
        try:
            names = listed_files(json.loads(summary.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            names = set()
        return [summary, *(self.out / name for name in sorted(names) if (self.out / name).is_file())]

    def publish(self, summary: dict) -> dict:
        """Move the staged files into the folder, replacing the earlier run's, ``summary.json`` last.

        Args:
            summary: The run's summary; paths in it that point into ``staging`` are rewritten to the folder.

        Returns:
            The summary as written to ``OUT/summary.json`` (paths in the folder).
        """
        summary = _relocated(summary, str(self.staging), str(self.out))
        write_json_atomic(self.staging / SUMMARY_NAME, summary)
        replaced = self.out / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}-replaced"
        replaced.mkdir()
        moved_in: list[Path] = []
        try:
            for path in self._previous():  # the old summary first: no summary ever lists a mix
                os.replace(path, replaced / path.name)
            for path in sorted(self.staging.iterdir(), key=lambda p: p.name == SUMMARY_NAME):
                os.replace(path, self.out / path.name)
                moved_in.append(self.out / path.name)
        except BaseException:  # Ctrl-C or a full disk mid-way: the new files go, the earlier run's come back
            for path in moved_in:
                with contextlib.suppress(OSError):
                    path.unlink()
            for path in replaced.iterdir():
                with contextlib.suppress(OSError):
                    os.replace(path, self.out / path.name)
            raise
        finally:
            shutil.rmtree(replaced, ignore_errors=True)
        return summary
