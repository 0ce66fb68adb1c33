"""Run a prediction + explanation in a worker process that can be polled and killed at once.

Used by the Slicer Logic so the application is never frozen: the GUI thread starts the job,
polls it (a timer, at least once a second) and, on Cancel or when the scene closes, kills the
worker and its children (cancel takes effect at once, whatever the worker is doing: prediction,
a batch of slices, a perturbation method). The worker is ``seghirescam.ct.worker`` started with
the same Python (``PythonSlicer`` inside Slicer, as SlicerMONAIAuto3DSeg does) and talks through
files in a temporary folder and JSON lines on stdout. No slicer, no qt, no torch here.

Arrays crossing this boundary: ``ct`` (k, j, i) as stored, ``mask`` bool (k, j, i); maps float32 (k, j, i).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seghirescam.atomic import atomic_path, write_json_atomic
from seghirescam.ct.worker import PROGRESS_PREFIX

__all__ = ["JobRequest", "JobStatus", "JobResult", "BackgroundJob", "python_executable"]

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding the seghirescam package


@dataclass(frozen=True)
class JobRequest:
    """What the worker runs; every field is JSON (see ``seghirescam.ct.worker``).

    Attributes:
        model_path: Model file or folder; "" for the shipped default model.
        model_options: Loader options (e.g. {"folds": ["all"]}).
        target_class: Class index.
        layers: Layer names.
        methods: Method keys.
        device: "auto", "cuda" or "cpu".
        batch_size: Slices per pass or "auto".
        normalize: A key of ``cam.vocabulary.NORMALIZATIONS``.
        pixel_set: "prediction" (M from the model's own labels, computed by the worker) or any other
            key (M given as ``mask``).
        ijk_to_ras: The CT's 4x4 IJK-to-RAS matrix, as nested lists.
    """

    model_path: str
    model_options: dict
    target_class: int
    layers: list
    methods: list
    device: str
    batch_size: object
    normalize: str
    pixel_set: str
    ijk_to_ras: list


@dataclass(frozen=True)
class JobStatus:
    """A job's state at one poll.

    Attributes:
        state: "running", "finished", "failed" or "cancelled".
        stage: The worker's last stage: "start", "load", "predict", "explain", "write".
        done, total: Progress within the stage (total 0: unknown).
        seconds: Since the job started.
        error: For "failed": the message to show.
    """

    state: str
    stage: str
    done: int
    total: int
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class JobResult:
    """A finished job's output: ``maps`` {(method, layer): float32 (k, j, i)}, ``predicted`` uint8 or None, ``info``."""

    maps: dict
    predicted: np.ndarray | None
    info: dict


def python_executable() -> str:
    """Returns: the Python that runs workers: ``PythonSlicer`` inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


class BackgroundJob:
    """One worker process. Start with ``BackgroundJob.start``; call ``poll`` from the GUI thread.

    Not thread-safe by design: one thread (the GUI's) starts, polls and cancels it; a reader
    thread only moves the worker's stdout lines into a queue.
    """

    def __init__(self, folder: Path, process: subprocess.Popen) -> None:
        self.folder = folder
        self.process = process
        self.started = time.monotonic()
        self._lines: queue.Queue[str] = queue.Queue()
        self._log: collections.deque[str] = collections.deque(maxlen=40)
        self._stage, self._done, self._total = "start", 0, 0
        self._final: JobStatus | None = None
        self._error = ""
        self._reader = threading.Thread(target=self._read, name="SegHiResCAM worker output", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, request: JobRequest, ct: np.ndarray, mask: np.ndarray | None, *, python: str | None = None,
              folder: str | os.PathLike | None = None) -> BackgroundJob:
        """Write the inputs and start the worker.

        Args:
            request: What to run.
            ct: The CT, (k, j, i).
            mask: M, bool (k, j, i); None for pixel set "prediction".
            python: The interpreter (default: ``python_executable()``).
            folder: Where the job's files go (default: a new temporary folder, removed at the end).

        Returns:
            The running job.
        """
        job_folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="seghirescam-job-"))
        job_folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job_folder / "request.json", request.__dict__)
        arrays = {"ct": np.ascontiguousarray(ct)}
        if mask is not None:
            arrays["mask"] = np.ascontiguousarray(mask, dtype=bool)
        with atomic_path(job_folder / "inputs.npz") as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_PARENT, *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        flags = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        process = subprocess.Popen([python or python_executable(), "-m", "seghirescam.ct.worker", str(job_folder)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, text=True, encoding="utf-8", errors="replace", bufsize=1, **flags)
        return cls(job_folder, process)

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self.process.stdout.close()

    def poll(self) -> JobStatus:
        """Take the worker's new messages; returns the job's state (non-blocking)."""
        if self._final is not None:
            return self._final
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if not line.startswith(PROGRESS_PREFIX):
                self._log.append(line)
                continue
            message = json.loads(line[len(PROGRESS_PREFIX):])
            if message["stage"] == "failed":
                self._error = message["error"]
            elif message["stage"] != "finished":
                self._stage, self._done, self._total = message["stage"], message["done"], message["total"]
        seconds = time.monotonic() - self.started
        code = self.process.poll()
        if code is None or self._reader.is_alive():
            return JobStatus("running", self._stage, self._done, self._total, seconds)
        if code == 0 and (self.folder / "result.json").exists():
            self._final = JobStatus("finished", self._stage, self._done, self._total, seconds)
        else:
            error = self._error or ("the worker process ended unexpectedly (exit code "
                                    f"{code}): " + " | ".join(list(self._log)[-5:]))
            self._final = JobStatus("failed", self._stage, self._done, self._total, seconds, error)
        return self._final

    def result(self) -> JobResult:
        """The output of a finished job (call once ``poll`` said "finished").

        Raises:
            RuntimeError: If the job has not finished.
        """
        if self.poll().state != "finished":
            raise RuntimeError("the job has not finished")
        info = json.loads((self.folder / "result.json").read_text(encoding="utf-8"))
        with np.load(self.folder / "result.npz") as arrays:
            maps = {tuple(key): arrays[f"map_{n}"] for n, key in enumerate(info["keys"])}
            predicted = arrays["predicted"] if "predicted" in arrays.files else None
        return JobResult(maps, predicted, info)

    def cancel(self) -> None:
        """Kill the worker and its children now, and remove the job's files. Idempotent."""
        if self._final is None or self._final.state == "running":
            _kill_tree(self.process)
            self._final = JobStatus("cancelled", self._stage, self._done, self._total,
                                    time.monotonic() - self.started)
        self.close()

    def close(self) -> None:
        """Remove the job's files (the worker must have ended)."""
        if self.process.poll() is None:
            _kill_tree(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill a process and everything it started; returns once the process is gone."""
    if process.poll() is not None:
        return
    try:
        import psutil

        children = psutil.Process(process.pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing or the process just ended: the group kill below suffices
        children = []
    for child in children:
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    try:
        if os.name == "nt":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the whole group
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.wait(timeout=10)
