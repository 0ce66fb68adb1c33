"""Faults at a named write phase: a signal to this process, or an exception, at the rename that publishes a file.

Every file the package writes is published by ``os.replace`` (``seghirescam.atomic``) or, for a
batch case's folder, ``os.rename``; a fault fired just before that call hits the moment where the
new file is complete under its temporary name and the old one is still in place. ``inject``
patches ``os.replace`` and ``os.rename`` in this process (tests use it in-process for exceptions);
run as a script, it injects the fault and then runs the command line, for signals:

    python Testing/fault_injection.py PHASE FAULT MATCH -- batch manifest.csv --out OUT ...

PHASE is a key of ``PHASES``; FAULT is SIGINT, SIGKILL or ENOSPC; MATCH is a string the
published path must contain (e.g. a case id; "" for any).
"""

from __future__ import annotations

import builtins
import errno
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["PHASES", "inject", "fire", "as_in_a_terminal"]

_STAGED = (".staging",)


def _staged(path: Path) -> bool:
    return any(part in _STAGED or part.startswith(".tmp-") for part in path.parts[:-1])


PHASES: dict[str, Callable[[Path, Path], bool]] = {
    # a heatmap file, complete under its temporary name
    "heatmap": lambda src, dst: dst.name.endswith((".nrrd", ".nii.gz", ".mha")),
    "panel": lambda src, dst: dst.name.endswith("_panel.png"),
    "record": lambda src, dst: dst.name == "case.json",  # a batch case's record, written last in its folder
    "failure": lambda src, dst: dst.name == "last_failure.json",  # a failure beside kept outputs
    "summary": lambda src, dst: dst.name in ("summary.csv", "summary.json"),
    # a finished folder of new files moved into place (the old one already moved aside)
    "publish": lambda src, dst: _staged(src) and not _staged(dst) and not src.name.startswith(".tmp-"),
}


def as_in_a_terminal() -> None:
    """Let SIGINT raise KeyboardInterrupt, as in a terminal's foreground process.

    A process started from a shell's background job inherits SIGINT ignored, and Python then installs
    no handler: a test that sends SIGINT would see the run finish instead. Use as ``preexec_fn`` of a
    child process, or call at the start of one.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


def fire(fault: str) -> None:
    """Deliver the fault now: a signal to this process, or ``OSError(ENOSPC)`` (a full disk)."""
    if fault == "ENOSPC":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), getattr(signal, fault))
    time.sleep(10)  # SIGKILL ends the process; SIGINT's KeyboardInterrupt is raised here at the latest
    raise AssertionError(f"{fault} did not stop the process")


def inject(phase: str, fault: str | Callable[[], None], match: str = "", *, setattr=None) -> list[Path]:
    """Patch ``os.replace`` and ``os.rename`` so that the first publish of the phase, for a path holding
    ``match``, fires the fault instead of happening.

    Args:
        phase: A key of ``PHASES``.
        fault: "SIGINT", "SIGKILL", "ENOSPC", or a callable that raises.
        match: A string the source or destination path must contain.
        setattr: How to patch (a pytest ``monkeypatch.setattr``); default: for good (a script).

    Returns:
        A list that receives the destination path when the fault fires.
    """
    setter = setattr or builtins.setattr
    fired: list[Path] = []
    for name in ("replace", "rename"):
        real = getattr(os, name)

        def patched(src, dst, *args, _real=real, **kwargs):
            source, destination = Path(src), Path(dst)
            if not fired and PHASES[phase](source, destination) and match in f"{source}|{destination}":
                fired.append(destination)
                fire(fault) if isinstance(fault, str) else fault()
            return _real(src, dst, *args, **kwargs)

        setter(os, name, patched)
    return fired


if __name__ == "__main__":
    phase_name, fault_name, match_text, separator, *command = sys.argv[1:]
    assert separator == "--", "usage: fault_injection.py PHASE FAULT MATCH -- ARGS..."
    as_in_a_terminal()
    inject(phase_name, fault_name, match_text)
    from seghirescam.cli import main

    sys.exit(main(command))
