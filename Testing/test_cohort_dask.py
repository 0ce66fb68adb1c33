"""Cohort runs on Dask: a local cluster of 2 worker processes gives the sequential run's results."""

from __future__ import annotations

import os
import subprocess
import sys

import distributed
import numpy as np
import pytest
import SimpleITK as sitk
from test_cohort_runner import PHANTOM_NAMES, read_summary, record, write_cohort, write_label_names

from seghirescam.cohort.runner import BatchSettings, run_batch
from seghirescam.cli import main
from seghirescam.cohort.dask_executor import worker_device, worker_ordinal


@pytest.mark.parametrize("requested, name, gpus, device", [
    ("auto", 0, 0, "cpu"), ("auto", 3, 2, "cuda:1"), ("cuda", "gpu-2", 4, "cuda:2"), ("auto", "tcp://h:1", 1, "cuda:0"),
    ("cpu", 5, 8, "cpu"), ("cuda:3", 0, 8, "cuda:3"),
])
def test_each_worker_is_pinned_to_one_gpu(requested, name, gpus, device):
    assert worker_device(requested, name, n_gpus=gpus) == device


@pytest.mark.slow
def test_worker_ordinal_is_stable_for_names_without_digits():
    """Workers are separate processes: the ordinal of a name must not depend on the process (no hash())."""
    code = "from seghirescam.cohort.dask_executor import worker_ordinal; print(worker_ordinal('alpha'))"
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace", check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    assert seen == {str(worker_ordinal("alpha"))}
    assert worker_ordinal(7) == 7 and worker_ordinal("gpu-3") == 3


def _maps(out, case_id):
    r = record(out, case_id)
    return {name: sitk.GetArrayFromImage(sitk.ReadImage(str(out / case_id / path)))
            for name, path in r["files"].items() if name != "panel"}


@pytest.mark.slow
def test_local_cluster_of_two_workers_matches_the_sequential_run(tmp_path):
    manifest, model = write_cohort(tmp_path / "data", 4)
    sequential = run_batch(manifest, tmp_path / "seq", BatchSettings(model=str(model), label_names=PHANTOM_NAMES, device="cpu", figure=False),
                           progress=False)
    assert sequential.exit_code == 0
    code = main(["batch", str(manifest), "--out", str(tmp_path / "dask"), "--model", str(model), "--device", "cpu",
                 "--label-names", str(write_label_names(manifest.parent)), "--no-figure", "--executor", "dask",
                 "--workers", "2"])
    assert code == 0
    workers = set()
    for expected in sequential.records:
        case_id = expected["case_id"]
        got = record(tmp_path / "dask", case_id)
        workers.add(got["worker"])
        assert got["status"] == "ok" and got["key"] == expected["key"] and got["device"] == "cpu"
        assert got["map_statistics"] == expected["map_statistics"]
        assert got["slice_indices"] == expected["slice_indices"]
        seq_maps, dask_maps = _maps(tmp_path / "seq", case_id), _maps(tmp_path / "dask", case_id)
        assert seq_maps.keys() == dask_maps.keys() and len(seq_maps) == 2
        for name in seq_maps:
            np.testing.assert_array_equal(dask_maps[name], seq_maps[name])
    assert workers <= {"0", "1"} and workers
    assert [r["case_id"] for r in read_summary(tmp_path / "dask")] == [f"case{i}" for i in range(4)]


def test_existing_scheduler_runs_cases_and_records_failures(tmp_path):
    manifest, model = write_cohort(tmp_path / "data", 1)
    manifest.write_text(manifest.read_text(encoding="utf-8") + "broken,missing_ct.nii.gz,case0_seg.nii.gz,kidney\n")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        report = run_batch(manifest, tmp_path / "out", BatchSettings(model=str(model), label_names=PHANTOM_NAMES, device="cpu", figure=False),
                           executor="dask", scheduler=cluster.scheduler_address, progress=False)
    assert report.exit_code == 1 and report.failed == ["broken"]
    assert record(tmp_path / "out", "broken")["error"]["type"] == "FileNotFoundError"
    assert record(tmp_path / "out", "case0")["status"] == "ok"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        again = run_batch(manifest, tmp_path / "out", BatchSettings(model=str(model), label_names=PHANTOM_NAMES, device="cpu", figure=False),
                          executor="dask", scheduler=cluster.scheduler_address, progress=False)
    assert [r["reused"] for r in again.records] == [True, False]  # finished case skipped, failed one retried
