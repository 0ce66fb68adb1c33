"""Cases as tasks on a Dask distributed cluster: an existing scheduler, or a local cluster.

Each task is one case (``batch_case.process_case``); a worker process loads the model once
and keeps it. Results are gathered as they complete. On a machine with GPUs, a worker asked
for device "auto" (or "cuda") uses ``cuda:<worker ordinal % GPUs visible>``, the ordinal taken
from the worker's name (LocalCluster names workers 0, 1, ...; ``dask worker --name gpu-3`` gives
3). A worker started with one visible GPU (``CUDA_VISIBLE_DEVICES``, as dask-cuda does) uses
``cuda:0``. Without GPUs the device is "cpu".
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from seghirescam.cohort.case_runner import STAGING, BatchSettings, process_case, record_failure
from seghirescam.cohort.manifest import CaseRow

__all__ = ["run_on_dask", "worker_device", "worker_ordinal", "dask_case"]

logger = logging.getLogger(__name__)


def worker_ordinal(name: object) -> int:
    """A worker's ordinal from its name: an int, the trailing digits of a string, else a stable hash."""
    if isinstance(name, int):
        return name
    digits = re.search(r"(\d+)$", str(name))
    return int(digits.group(1)) if digits else zlib.crc32(str(name).encode())


def worker_device(requested: str, worker_name: object, n_gpus: int | None = None) -> str:
    """The device a worker uses: ``requested`` unless it is "auto"/"cuda" and GPUs are visible.

    Args:
        requested: The run's device setting.
        worker_name: The Dask worker's name.
        n_gpus: GPUs visible to the worker (default: ``torch.cuda.device_count()``).

    Returns:
        "cuda:N" pinned by the worker's ordinal, "cpu" for "auto" without GPUs, else ``requested``.
    """
    if requested not in ("auto", "cuda"):
        return requested
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus == 0:
        return "cpu" if requested == "auto" else requested
    return f"cuda:{worker_ordinal(worker_name) % n_gpus}"


def dask_case(row: CaseRow, settings: BatchSettings, out: str) -> dict:
    """The task: one case on the worker's pinned device (see ``process_case``)."""
    from distributed import get_worker

    try:
        name = get_worker().name
    except ValueError:  # not on a worker (e.g. a synchronous scheduler in tests)
        name = 0
    return process_case(row, settings, out, device=worker_device(settings.device, name), worker=str(name))


def run_on_dask(rows: Sequence[CaseRow], settings: BatchSettings, out: str | os.PathLike,
                on_result: Callable[[dict], None], *, scheduler: str | None = None, workers: int | None = None) -> None:
    """Run the cases as Dask tasks and call ``on_result(record)`` as each completes.

    A task whose worker died is recorded as a failed case. On Ctrl-C the futures are
    cancelled and, for a cluster started here, the cluster is closed and the staged files of
    unfinished cases are removed.

    Args:
        rows: The cases.
        settings: The run's settings (the model path must be readable by every worker).
        out: The output folder (shared by the workers and this process).
        on_result: Called in this process with each case's record.
        scheduler: Address of a running scheduler, e.g. "tcp://10.0.0.5:8786".
        workers: Size of the local cluster when no scheduler is given (default 1).

    Raises:
        ImportError: If dask.distributed is not installed (``pip install "dask[distributed]"``).
    """
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as error:
        raise ImportError('--executor dask needs dask.distributed: pip install "dask[distributed]"') from error
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=int(workers or 1), threads_per_worker=1, processes=True,
                               dashboard_address=None)
    client = Client(scheduler or cluster)
    run = uuid.uuid4().hex[:8]
    futures = {}  # future -> its case
    try:
        for row in rows:
            futures[client.submit(dask_case, row, settings, str(out), key=f"seghirescam-{row.case_id}-{run}",
                                  pure=False)] = row
        for future in as_completed(list(futures)):
            row = futures[future]
            try:
                record = future.result()
            except Exception as error:  # noqa: BLE001 - a lost worker fails its case, not the run
                logger.warning("case %s: its task failed on the cluster: %s", row.case_id, error)
                record = record_failure(row, settings, out, error)
            on_result(record)
    except BaseException:
        client.cancel(list(futures))
        if cluster is not None:
            client.close()
            cluster.close()
            client = cluster = None
            shutil.rmtree(Path(out) / STAGING, ignore_errors=True)
        raise
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
