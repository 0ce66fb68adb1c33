"""Atomic file writes: the one rule for every file the package writes.

A file is written under a temporary name in its own folder and renamed onto its real name
(``os.replace``) only when writing succeeded, so a reader sees the old file or the new one,
never half of one. On any exception, ``KeyboardInterrupt`` included, the temporary file is
removed and the exception goes on. Temporary names start with ``.tmp-`` (``is_temporary``
recognises them) and end with the real file name, so writers that pick the format from the
extension (SimpleITK, matplotlib, numpy) write the same format.

This module imports nothing from the package: every sub-package may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEMPORARY_PREFIX", "atomic_path", "is_temporary", "remove_temporaries", "check_writable_folder",
           "write_text_atomic", "write_json_atomic"]

TEMPORARY_PREFIX = ".tmp-"


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether a file or folder name is one of ``atomic_path``'s temporary names."""
    return Path(path).name.startswith(TEMPORARY_PREFIX)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders a killed writer left directly in ``folder``.

    Only one writer may use a folder at a time (``seghirescam explain`` and ``batch`` take their output
    folder for themselves), so every temporary name found there is a leftover.

    Args:
        folder: The folder to tidy (nothing happens when it does not exist).

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if is_temporary(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
    return removed


def check_writable_folder(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any work is done.

    Args:
        folder: The output folder.
        option: The option that named it, for the message.

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        NotADirectoryError: If ``folder`` (or a parent) is a file.
        PermissionError: If the folder cannot be created or written (read-only disk, no permission).
        OSError: For any other reason it cannot be written (e.g. a full disk).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{option} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}-write-test"
        with probe.open("wb") as handle:
            handle.write(b"0")
        probe.unlink()
    except FileExistsError:
        raise NotADirectoryError(f"{option} {folder}: a part of the path is a file, not a folder") from None
    except NotADirectoryError:
        raise NotADirectoryError(f"{option} {folder}: a part of the path is a file, not a folder") from None
    except PermissionError as error:
        raise PermissionError(f"{option} {folder} is not writable: {error.strerror or error}") from None
    except OSError as error:
        raise OSError(error.errno, f"{option} {folder} cannot be written: {error.strerror or error}") from None
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, keep_name: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    Example::

        with atomic_path(out / "ct.nrrd") as temporary:
            sitk.WriteImage(image, str(temporary))

    Args:
        path: The file to write. Its folder is created if needed.
        keep_name: Yield ``<folder>/.tmp-<random>/<name>`` instead of ``<folder>/.tmp-<random>-<name>``,
            for writers that store the file's own name inside it (a Slicer ``.mrb`` bundle).

    Yields:
        The temporary path to write (it does not exist yet).

    Raises:
        FileNotFoundError: If the block did not create the temporary file.
        Whatever the block raised, after the temporary file was removed; ``path`` is then unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}"
    folder = path.parent / token if keep_name else None
    if folder is not None:
        folder.mkdir()
    temporary = folder / path.name if folder is not None else path.parent / f"{token}-{path.name}"
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      newline: str | None = None) -> Path:
    """Write text atomically (flushed to disk before the rename); UTF-8 whatever the locale.

    Args:
        path: The file.
        text: Its new contents.
        encoding: Text encoding.
        newline: As for ``open`` ("" keeps the line endings in ``text`` as they are).

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    with atomic_path(path) as temporary, temporary.open("w", encoding=encoding, newline=newline) as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def write_json_atomic(path: str | os.PathLike, data: object) -> Path:
    """Write JSON atomically: indented, a final newline, values JSON does not know written as ``str``.

    Returns:
        ``path`` as a ``Path``.
    """
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
