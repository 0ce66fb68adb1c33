"""``seghirescam batch``: manifest, outputs, resume, failures, interruption. Tiny phantoms and a tiny model."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from fault_injection import as_in_a_terminal as signal_as_in_a_terminal
from seghirescam import UNet2D
from seghirescam.cohort.runner import BatchSettings, run_batch
from seghirescam.cli import main
from seghirescam.imaging.geometry import Geometry
from seghirescam.cohort.manifest import ManifestError, read_manifest
from seghirescam.models.loading import save_model, unet_card
from seghirescam.synthetic.phantom import LABELS, make_phantom
from seghirescam.imaging.volumes import Volume, write_volume

SHAPE, SPACING = (8, 64, 64), (5.0, 5.0, 20.0)  # (k, j, i) and (i, j, k) mm: kidney on 6-7 of 8 slices
HIRES = "kidney__M-kidney_seg-hires-grad-cam_bottleneck.nrrd"  # class kidney explained over the kidney segment
PHANTOM_NAMES = {value: name for name, value in LABELS.items() if value}  # the phantoms' label value -> name
KITS_IPL = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # i -> Inferior, j -> Posterior, k -> Left (LPS)


def tiny_model(folder: Path) -> Path:
    """A small random U-Net with a card, saved as safetensors."""
    torch.manual_seed(0)
    model = UNet2D(1, 4, (4, 8, 16, 32)).eval()
    card = unet_card(model, "tiny", ("background", "kidney", "tumor", "cyst"), hu_clip=(-200, 300), mean=40, std=120)
    return save_model(model, card, folder / "tiny.safetensors")


def write_case(folder: Path, name: str, seed: int, kits: bool = False) -> tuple[str, str]:
    """A phantom CT and its labels as NIfTI; ``kits`` stores them as KiTS23 does (axial axis last, IPL)."""
    phantom = make_phantom(seed, shape=SHAPE, spacing=SPACING, tumor=True)
    ct, labels, geometry = phantom.ct, phantom.labels, phantom.geometry
    if kits:  # (k, j, i) = (left, posterior, inferior)
        ct, labels = (np.ascontiguousarray(a.transpose(2, 1, 0)[:, :, ::-1]) for a in (ct, labels))
        geometry = Geometry((SPACING[2], SPACING[1], SPACING[0]), (0.0, 0.0, 0.0), KITS_IPL)
    write_volume(Volume(ct, geometry), folder / f"{name}_ct.nii.gz")
    write_volume(Volume(labels, geometry), folder / f"{name}_seg.nii.gz")
    return f"{name}_ct.nii.gz", f"{name}_seg.nii.gz"


def write_manifest(folder: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    """A manifest CSV with the columns of ``rows``' first entry."""
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_cohort(folder: Path, n: int) -> tuple[Path, Path]:
    """n phantom cases (kidney by name) and the tiny model. Returns (manifest, model)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n):
        ct, seg = write_case(folder, f"case{index}", seed=index)
        rows.append({"case_id": f"case{index}", "ct": ct, "seg": seg, "segment": "kidney"})
    return write_manifest(folder, rows), tiny_model(folder)


def write_label_names(folder: Path) -> Path:
    """``folder/label_names.json``: the phantoms' label names (NIfTI label files store none)."""
    path = folder / "label_names.json"
    path.write_text(json.dumps(PHANTOM_NAMES), encoding="utf-8")
    return path


def batch(manifest: Path, out: Path, model: Path, *extra: str) -> int:
    """``seghirescam batch`` on CPU with the phantoms' label names."""
    return main(["batch", str(manifest), "--out", str(out), "--model", str(model), "--device", "cpu",
                 "--label-names", str(write_label_names(manifest.parent)), *extra])


def read_summary(out: Path) -> list[dict]:
    with (out / "summary.csv").open() as handle:
        return list(csv.DictReader(handle))


def record(out: Path, case_id: str) -> dict:
    return json.loads((out / case_id / "case.json").read_text(encoding="utf-8"))


def heat(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def leftovers(out: Path) -> list[str]:
    """Temporary or staged files anywhere under ``out``."""
    return [str(p) for p in out.rglob("*") if ".staging" in p.parts or ".tmp" in p.name]


@pytest.fixture
def cohort(tmp_path):
    return write_cohort(tmp_path / "data", 2)


def test_manifest_values_names_points_and_relative_paths(tmp_path):
    path = write_manifest(tmp_path, [
        {"case_id": "a", "ct": "ct.nii.gz", "seg": "/abs/seg.nrrd", "segment": "1;2", "point": "", "target_class": ""},
        {"case_id": "b-2", "ct": "sub/ct", "seg": "s.nii.gz", "segment": "Left kidney", "point": "3;4;5",
         "target_class": "tumor"}])
    a, b = read_manifest(path)
    assert (a.ct, a.seg, a.label_values, a.segment_name, a.point) == (tmp_path / "ct.nii.gz", Path("/abs/seg.nrrd"),
                                                                      (1, 2), None, None)
    assert (b.ct, b.label_values, b.segment_name, b.point, b.target_class) == (tmp_path / "sub/ct", None,
                                                                               "Left kidney", (3, 4, 5), "tumor")


@pytest.mark.parametrize("text, message", [
    ("case_id,ct,segment\na,ct,1\n", "missing ['seg']"),
    ("case_id,ct,seg,segment,colour\na,ct,s,1,red\n", "unknown ['colour']"),
    ("case_id,ct,seg,segment\na,ct,s,1\nb,ct,s,1\na,ct2,s2,2\n", "line 4: duplicate case id 'a' (first on line 2)"),
    ("case_id,ct,seg,segment,point\na,ct,s,1,1;2\n", "line 2: point '1;2' must be three voxel indices"),
    ("case_id,ct,seg,segment\n../up,ct,s,1\nb,,s,1\n", "line 3: empty ct"),
])
def test_bad_manifests_are_reported_before_any_work(tmp_path, capsys, text, message):
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match="nothing was run|the header"):
        read_manifest(tmp_path / "m.csv")
    assert batch(tmp_path / "m.csv", tmp_path / "out", tmp_path / "no-model.safetensors") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_outputs_keep_the_ct_geometry_and_match_explain(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    model = tiny_model(data)
    rows = [{"case_id": name, "ct": ct, "seg": seg, "segment": "kidney"}
            for name, (ct, seg) in (("axial", write_case(data, "axial", 5)), ("kits", write_case(data, "kits", 5, True)))]
    manifest, out = write_manifest(data, rows), tmp_path / "out"
    kidney_slices = (sitk.GetArrayFromImage(sitk.ReadImage(str(data / "axial_seg.nii.gz"))) == 1).any(axis=(1, 2))
    assert batch(manifest, out, model) == 0
    for name in ("axial", "kits"):
        r = record(out, name)
        assert r["status"] == "ok" and r["device"] == "cpu" and r["seconds"] > 0
        assert r["slices_explained"] == len(r["slice_indices"]) == kidney_slices.sum() < SHAPE[0]
        assert set(r["map_statistics"]) == {"seg-hires-grad-cam@bottleneck", "seg-grad-cam@bottleneck"}
        assert all(0 < s["mass_inside_m"] < 1 and s["mean_inside_m"] > 0 for s in r["map_statistics"].values())
        assert (out / name / r["files"]["panel"]).stat().st_size > 10_000
        ct = sitk.ReadImage(str(data / f"{name}_ct.nii.gz"))
        assert r["shape_kji"] == list(ct.GetSize()[::-1])
        for key in ("seg-hires-grad-cam@bottleneck", "seg-grad-cam@bottleneck"):
            image = sitk.ReadImage(str(out / name / r["files"][key]))
            for attribute in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
                np.testing.assert_allclose(getattr(image, attribute)(), getattr(ct, attribute)(), atol=1e-6)
    # maps live on the slices holding the segment; the same patient stored the KiTS way gives the same map
    axial = heat(out / "axial" / HIRES)
    assert not axial[~kidney_slices].any() and axial[kidney_slices].any(axis=(1, 2)).all()
    np.testing.assert_array_equal(heat(out / "kits" / HIRES).transpose(2, 1, 0)[::-1], axial)
    assert [(r["case_id"], r["status"], r["reused"]) for r in read_summary(out)] == [("axial", "ok", "no"),
                                                                                      ("kits", "ok", "no")]
    assert float(read_summary(out)[0]["mass_inside_m[seg-hires-grad-cam@bottleneck]"]) > 0
    assert main(["explain", "--ct", str(data / "axial_ct.nii.gz"), "--seg", str(data / "axial_seg.nii.gz"),
                 "--segment", "kidney", "--label-names", str(write_label_names(data)), "--out", str(tmp_path / "explain"),
                 "--model", str(model), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(heat(tmp_path / "explain" / HIRES), heat(out / "axial" / HIRES))


def test_rerun_skips_finished_cases_and_redoes_changed_ones(cohort, tmp_path):
    manifest, model = cohort
    out = tmp_path / "out"
    settings = BatchSettings(model=str(model), label_names=PHANTOM_NAMES, device="cpu", figure=False)
    first = run_batch(manifest, out, settings, progress=False)
    assert first.exit_code == 0 and not any(r["reused"] for r in first.records)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nrrd")}
    again = run_batch(manifest, out, settings, progress=False)
    assert all(r["reused"] for r in again.records)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nrrd")} == stamps
    image = sitk.ReadImage(str(manifest.parent / "case1_ct.nii.gz"))
    image[10, 10, 0] = 999  # new content, same name
    sitk.WriteImage(image, str(manifest.parent / "case1_ct.nii.gz"))
    changed = run_batch(manifest, out, settings, progress=False)
    assert [r["reused"] for r in changed.records] == [True, False]
    fewer = run_batch(manifest, out, BatchSettings(model=str(model), label_names=PHANTOM_NAMES, device="cpu", figure=False,
                                                   methods=("seg-grad-cam",)), progress=False)
    assert not any(r["reused"] for r in fewer.records)
    assert sorted(p.name for p in (out / "case0").iterdir()) == ["case.json", "kidney__M-kidney_seg-grad-cam_bottleneck.nrrd"]
    assert not leftovers(out)


def test_failing_cases_are_recorded_and_the_run_goes_on(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    model = tiny_model(data)
    ct, seg = write_case(data, "good", 1)
    (data / "garbage.nii.gz").write_bytes(b"not an image at all")
    labels = sitk.ReadImage(str(data / seg))
    labels.SetOrigin([o + 2000.0 for o in labels.GetOrigin()])
    sitk.WriteImage(labels, str(data / "far_seg.nii.gz"))
    nan_ct = sitk.Cast(sitk.ReadImage(str(data / ct)), sitk.sitkFloat32)
    nan_ct[30, 30, 5] = float("nan")
    sitk.WriteImage(nan_ct, str(data / "nan_ct.nrrd"))
    rows = [{"case_id": "good", "ct": ct, "seg": seg, "segment": "kidney"},
            {"case_id": "unreadable", "ct": "garbage.nii.gz", "seg": seg, "segment": "kidney"},
            {"case_id": "apart", "ct": ct, "seg": "far_seg.nii.gz", "segment": "kidney"},
            {"case_id": "empty", "ct": ct, "seg": seg, "segment": "3"},
            {"case_id": "nan", "ct": "nan_ct.nrrd", "seg": seg, "segment": "1"}]
    manifest, out = write_manifest(data, rows), tmp_path / "out"
    assert batch(manifest, out, model, "--no-figure") == 1
    expected = {"unreadable": ("ValueError", "could not read"), "apart": ("ValueError", "do not overlap"),
                "empty": ("ValueError", "is empty"), "nan": ("CorruptImageError", "NaN")}
    assert record(out, "good")["status"] == "ok"
    for case_id, (kind, message) in expected.items():
        failed = record(out, case_id)
        assert failed["status"] == "failed" and failed["error"]["type"] == kind and message in failed["error"]["message"]
        assert [p.name for p in (out / case_id).iterdir()] == ["case.json"]
    summary = {r["case_id"]: r for r in read_summary(out)}
    assert summary["good"]["error"] == "" and "do not overlap" in summary["apart"]["error"]
    assert "failed apart: ValueError" in capsys.readouterr().out
    assert batch(manifest, out, model, "--no-figure") == 1  # failed cases are tried again, finished ones not
    assert {r["case_id"]: r["reused"] for r in read_summary(out)} == {"good": "yes", **{c: "no" for c in expected}}


@pytest.mark.parametrize("crash, code", [(KeyboardInterrupt, 130), (OSError, 1)])
def test_a_crash_while_writing_leaves_nothing_half_written(cohort, tmp_path, monkeypatch, crash, code):
    import seghirescam.ct.outputs as outputs

    manifest, model = cohort
    out, real = tmp_path / "out", outputs.write_volume

    def write_then_crash(volume, path, *args, **kwargs):
        written = real(volume, path, *args, **kwargs)  # a heatmap is on disk (staged) ...
        if "case1" in str(path):
            raise crash("No space left on device")  # ... when the case breaks before its record
        return written

    monkeypatch.setattr(outputs, "write_volume", write_then_crash)
    assert batch(manifest, out, model, "--no-figure") == code
    assert not leftovers(out) and not (out / ".staging").exists()
    assert record(out, "case0")["status"] == "ok"
    if crash is KeyboardInterrupt:  # stopped: the unfinished case left nothing; the summary says what finished
        assert not (out / "case1").exists()
        assert [r["case_id"] for r in read_summary(out)] == ["case0"]
    else:  # a failed case: its record, and nothing else
        assert [p.name for p in (out / "case1").iterdir()] == ["case.json"]
        assert record(out, "case1")["error"] == {"type": "OSError", "message": "No space left on device"}
    monkeypatch.undo()
    assert batch(manifest, out, model, "--no-figure") == 0
    assert [r["reused"] for r in read_summary(out)] == ["yes", "no"]


def test_ctrl_c_stops_the_run_with_code_130(tmp_path):
    # Enough cases that the run is still going when the signal arrives (a case takes about 0.1 s).
    manifest, model = write_cohort(tmp_path / "data", 25)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "seghirescam.cli", "batch", str(manifest), "--out", str(out), "--model",
               str(model), "--device", "cpu", "--no-figure", "--label-names", str(write_label_names(manifest.parent))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace",
                               preexec_fn=signal_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not (out / "case0" / "case.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    finished = sorted(p.parent.name for p in out.glob("*/case.json"))
    assert "case0" in finished and len(finished) < 25
    assert [r["case_id"] for r in read_summary(out)] == finished
    assert sorted(p.name for p in out.iterdir()) == sorted([*finished, "summary.csv"])  # nothing half-written


def test_float16_maps_on_request_are_written_as_float32(cohort, tmp_path):
    manifest, model = cohort
    rows = read_manifest(manifest)[:1]
    half = run_batch(rows, tmp_path / "half", BatchSettings(model=str(model), label_names=PHANTOM_NAMES, device="cpu", map_dtype="float16"),
                     progress=False)
    full = run_batch(rows, tmp_path / "full", BatchSettings(model=str(model), label_names=PHANTOM_NAMES, device="cpu", figure=False),
                     progress=False)
    assert half.exit_code == full.exit_code == 0 and half.records[0]["key"] != full.records[0]["key"]
    image = sitk.ReadImage(str(tmp_path / "half" / "case0" / HIRES))
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), heat(tmp_path / "full" / "case0" / HIRES), atol=1e-3)
    assert (tmp_path / "half" / "case0" / "kidney__M-kidney_panel.png").stat().st_size > 10_000


def test_cpu_auto_batch_is_capped_at_kits_slice_size():
    """At 512 x 512 the CPU "auto" batch holds 1 slice (~0.3 GB each for the default U-Net; small CPU batches are
    also the fastest), at 256 x 256 two."""
    from seghirescam import explain_volume

    torch.manual_seed(0)
    model = UNet2D(1, 4, (4, 8, 16, 32)).eval()
    volume = np.zeros((4, 512, 512), np.int16)
    mask = np.zeros(volume.shape, bool)
    mask[:, 250:260, 250:260] = True
    result = explain_volume(model, volume, mask, 1, batch_size="auto", device="cpu")
    assert result.batch_size == 1 and len(result.slices_explained) == 4
    small = explain_volume(model, volume[:, ::2, ::2], mask[:, ::2, ::2], 1, batch_size="auto", device="cpu")
    assert small.batch_size == 2


@pytest.mark.parametrize("normalize", ["volume", "slice"])
def test_float16_maps_keep_small_cams(normalize):
    """A random tiny model's raw CAMs are tiny (~1e-6), where float16 underflows: float16 maps must still match."""
    from seghirescam import explain_volume

    phantom = make_phantom(0, shape=SHAPE, spacing=SPACING)
    torch.manual_seed(0)
    model = UNet2D(1, 4, (4, 8, 16, 32)).eval()
    runs = {dtype: explain_volume(model, phantom.ct, phantom.labels == 1, 1, device="cpu", normalize=normalize,
                                  map_dtype=dtype) for dtype in (np.float32, np.float16)}
    explained = list(runs[np.float32].slices_explained)
    for key in runs[np.float32].keys():
        full, half = runs[np.float32][key], runs[np.float16][key]
        assert half.dtype == np.float16 and full.max() == 1.0
        assert 0 < runs[np.float32].scales[key][explained].max() < 6e-5  # raw CAMs below float16's normal range
        np.testing.assert_allclose(half, full, atol=2e-3)
        np.testing.assert_allclose(runs[np.float16].scales[key], runs[np.float32].scales[key], rtol=1e-6)


def _reference_map_statistics(heat: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The statistics computed the plain way, with copies (what the one, copy-free writer must match)."""
    total = float(heat.sum(dtype=np.float64))
    return {"mass_inside_m": round(float(heat[mask].sum(dtype=np.float64)) / total, 4) if total > 0 else 0.0,
            "mean_inside_m": round(float(heat[mask].mean()), 5) if mask.any() else 0.0,
            "mean_outside_m": round(float(heat[~mask].mean()), 5) if (~mask).any() else 0.0,
            "max": round(float(heat.max()), 5)}


def test_lean_map_statistics_equal_the_outputs_ones():
    from seghirescam.ct.outputs import map_statistics

    reference = _reference_map_statistics

    rng = np.random.default_rng(0)
    heat = np.clip(rng.normal(0.2, 0.3, (6, 40, 50)), 0, None).astype(np.float32)
    for mask in (rng.random(heat.shape) < 0.1, np.zeros(heat.shape, bool), np.ones(heat.shape, bool)):
        lean, full = map_statistics(heat, mask), reference(heat, mask)
        assert lean.keys() == full.keys()
        assert all(abs(lean[k] - full[k]) <= 1e-5 for k in full), (lean, full)
