"""scripts/slicer_cohort.py under slicer-core: one .mrb per case that opens with the heatmap over the CT."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_module
import SimpleITK as sitk
from test_cohort_runner import PHANTOM_NAMES, read_summary, tiny_model, write_case, write_label_names, write_manifest

from seghirescam.cohort.runner import BatchSettings, run_batch

slicer = require_module("slicer")

from seghirescam.mrml.nodes import ijk_to_ras_of  # noqa: E402
from slicer_scene import make_headless_slicer  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slicer_cohort.py"
HIRES = "Seg-HiRes-Grad CAM bottleneck (kidney)"


def _read_scene(path: Path, cache: Path):
    """Open a scene bundle as Slicer does: into a scene with the module logics (markups need theirs).

    Returns:
        The headless session; its ``scene`` holds the bundle's nodes.
    """
    app = make_headless_slicer()
    cache_manager = slicer.vtkCacheManager()
    cache_manager.SetRemoteCacheDirectory(str(cache))
    app.scene.SetCacheManager(cache_manager)
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache_manager)
    app.scene.SetDataIOManager(io_manager)
    assert app.scene.ReadFromMRB(str(path)), f"could not read {path}"
    return app


def _run(manifest: Path, out: Path, model: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--", str(manifest), str(out), "--model", str(model),
                           "--device", "cpu", "--label-names", str(write_label_names(manifest.parent))],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=300)


@pytest.mark.slow
def test_cohort_scenes_show_the_heatmap_over_the_ct(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    model = tiny_model(data)
    ct, seg = write_case(data, "a", 2)
    rows = [{"case_id": "seg", "ct": ct, "seg": seg, "segment": "kidney", "point": ""},
            {"case_id": "point", "ct": ct, "seg": seg, "segment": "1", "point": "30;32;6"},
            {"case_id": "empty", "ct": ct, "seg": seg, "segment": "cyst", "point": ""}]
    manifest, out = write_manifest(data, rows), tmp_path / "scenes"
    done = _run(manifest, out, model)
    assert done.returncode == 1, done.stderr  # one case fails, the others are written
    assert "empty failed: ValueError" in done.stderr
    assert sorted(p.name for p in out.glob("*.mrb")) == ["point.mrb", "seg.mrb"]
    assert not list(out.glob(".tmp*")) and not list(out.glob("_tmp*"))

    batch_out = tmp_path / "batch"
    run_batch(write_manifest(data, rows[:1], "first.csv"), batch_out,
              BatchSettings(model=str(model), label_names=PHANTOM_NAMES, device="cpu", figure=False), progress=False)
    assert [r["status"] for r in read_summary(batch_out)] == ["ok"]
    for case_id in ("seg", "point"):
        session = _read_scene(out / f"{case_id}.mrb", tmp_path / "cache" / case_id)
        scene = session.scene
        ct_node, heat = scene.GetFirstNodeByName(case_id), scene.GetFirstNodeByName(f"{case_id} {HIRES}")
        assert ct_node is not None and heat is not None
        composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        assert composites.GetNumberOfItems() >= 1
        for index in range(composites.GetNumberOfItems()):
            composite = composites.GetItemAsObject(index)
            assert composite.GetBackgroundVolumeID() == ct_node.GetID()
            assert scene.GetNodeByID(composite.GetForegroundVolumeID()).GetAttribute("SegHiResCAM.Role") == "heatmap"
        np.testing.assert_allclose(ijk_to_ras_of(heat), ijk_to_ras_of(ct_node), atol=1e-6)
        heat_array = slicer.util.arrayFromVolume(heat)
        file_ct = sitk.GetArrayFromImage(sitk.ReadImage(str(data / ct)))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct_node), file_ct)
        if case_id == "seg":  # the Logic and `seghirescam batch` give the same map, voxel for voxel
            batch_map = sitk.ReadImage(str(batch_out / "seg" / "kidney__M-kidney_seg-hires-grad-cam_bottleneck.nrrd"))
            np.testing.assert_array_equal(heat_array, sitk.GetArrayFromImage(batch_map))
        else:  # M is a disc around the point (I, J, K) = (30, 32, 6): only slice k = 6 is explained
            assert np.flatnonzero(heat_array.any(axis=(1, 2))).tolist() == [6]

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mrb")}
    spec = importlib.util.spec_from_file_location("slicer_cohort", SCRIPT)  # the re-run in this process
    cohort = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cohort)
    with caplog.at_level(logging.INFO, logger="slicer_cohort"):
        assert cohort.main(["--", str(manifest), str(out), "--model", str(model), "--device", "cpu",
                            "--label-names", str(write_label_names(manifest.parent))]) == 1
    assert caplog.text.count("done earlier, skipped") == 2 and "empty failed" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mrb")} == stamps
