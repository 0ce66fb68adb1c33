"""Cases as tasks on a Dask distributed cluster: an existing scheduler, or a local cluster.

Each task is one case (``loop.process_one`` of a ``case_runner.BatchJob``); a worker process
loads the model once and keeps it. Results are gathered as they complete; the loop around them
(``loop.run_cases``) is the local run's. On a machine with GPUs, a worker asked
for device "auto" (or "cuda") uses ``cuda:<worker ordinal % GPUs visible>``, the ordinal taken
from the worker's name (LocalCluster names workers 0, 1, ...; ``dask worker --name gpu-3`` gives
3). A worker started with one visible GPU (``CUDA_VISIBLE_DEVICES``, as dask-cuda does) uses
``cuda:0``. Without GPUs the device is "cpu".
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
import zlib
from collections.abc import Iterator, Sequence

from seghirescam.cohort.case_runner import BatchJob, tidy_staging
from seghirescam.cohort.loop import process_one
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


def dask_case(job: BatchJob, row: CaseRow) -> dict:
    """The task: one case on the worker's pinned device (``loop.process_one``)."""
    from distributed import get_worker

    try:
        name = get_worker().name
    except ValueError:  # not on a worker (e.g. a synchronous scheduler in tests)
        name = 0
    job = dataclasses.replace(job, device=worker_device(job.settings.device, name), worker=str(name))
    return process_one(job, row)


def run_on_dask(rows: Sequence[CaseRow], job: BatchJob, *, scheduler: str | None = None,
                workers: int | None = None) -> Iterator[tuple[CaseRow, dict | BaseException]]:
    """An executor for ``loop.run_cases``: the cases as Dask tasks, yielded as each completes.

    A task whose worker died is yielded with its exception (the loop records the case as
    failed). On Ctrl-C, or when the loop stops early, the futures are cancelled and, for a
    cluster started here, the cluster is closed and the staged files of unfinished cases are
    removed.

    Args:
        rows: The cases.
        job: What a case does (its model path must be readable by every worker; ``job.loaded``
            None: each worker loads the model once).
        scheduler: Address of a running scheduler, e.g. "tcp://10.0.0.5:8786".
        workers: Size of the local cluster when no scheduler is given (default 1).

    Yields:
        (row, record) as cases finish, or (row, exception) for a lost task.

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
            futures[client.submit(dask_case, job, row, key=f"seghirescam-{row.case_id}-{run}", pure=False)] = row
        for future in as_completed(list(futures)):
            row = futures[future]
            try:
                outcome = future.result()
            except Exception as error:  # noqa: BLE001 - a lost worker fails its case, not the run
                outcome = error
            yield row, outcome
    except BaseException:  # Ctrl-C, or the loop closed this generator early
        client.cancel(list(futures))
        if cluster is not None:
            client.close()
            cluster.close()
            client = cluster = None
            tidy_staging(job.out, clear=True)
        raise
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
