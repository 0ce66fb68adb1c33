"""``--precision`` of ``seghirescam explain`` and ``batch``: fp32 by default, bf16 refused without hardware."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from seghirescam.cam import runtime
from seghirescam.cli import main
from seghirescam.cohort.settings import BatchSettings
from seghirescam.imaging.volumes import Volume, write_volume
from seghirescam.synthetic.phantom import make_phantom


@pytest.fixture
def case_files(tmp_path):
    phantom = make_phantom(4, shape=(8, 64, 64), spacing=(4.0, 4.0, 6.0), tumor=True)
    write_volume(Volume(phantom.ct, phantom.geometry), tmp_path / "ct.nii.gz")
    write_volume(Volume(phantom.labels, phantom.geometry), tmp_path / "labels.nii.gz")
    return tmp_path


def _explain(folder, out, *extra):
    return main(["explain", "--ct", str(folder / "ct.nii.gz"), "--seg", str(folder / "labels.nii.gz"), "--label", "1",
                 "--target-class", "kidney", "--device", "cpu", "--out", str(folder / out), *extra])


def test_bf16_is_refused_with_a_clear_message(case_files, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert _explain(case_files, "out", "--precision", "bf16") == 2
    assert "bf16 needs bfloat16 arithmetic in hardware, and this CPU has none" in capsys.readouterr().err
    manifest = case_files / "cases.csv"
    manifest.write_text("case_id,ct,seg,segment\ncase,ct.nii.gz,labels.nii.gz,1\n", encoding="utf-8")
    assert main(["batch", str(manifest), "--out", str(case_files / "batch"), "--device", "cpu",
                 "--precision", "bf16"]) == 2
    assert "this CPU has none" in capsys.readouterr().err
    assert not (case_files / "batch").exists()


def test_bf16_preview_is_close_to_fp32(case_files, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)  # emulated here; the same code path
    assert _explain(case_files, "fp32") == 0
    assert _explain(case_files, "bf16", "--precision", "bf16") == 0
    for path in sorted((case_files / "fp32").glob("*.nrrd")):
        exact = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        preview = sitk.GetArrayFromImage(sitk.ReadImage(str(case_files / "bf16" / path.name)))
        assert exact.max() == pytest.approx(1.0)
        assert 0 < np.abs(preview - exact).max() < 0.25, path.name


def test_precision_enters_the_resume_key_only_when_not_fp32():
    fp32, bf16 = BatchSettings(), BatchSettings(precision="bf16")
    assert "precision" not in fp32.key_fields()
    assert bf16.key_fields()["precision"] == "bf16"
    assert json.dumps(fp32.key_fields(), sort_keys=True) != json.dumps(bf16.key_fields(), sort_keys=True)
