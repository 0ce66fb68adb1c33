"""The one atomic-write helper: a file appears whole or not at all, and a failure leaves no temporary file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from seghirescam.atomic import TEMPORARY_PREFIX, atomic_path, is_temporary, write_json_atomic, write_text_atomic


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_success_renames_onto_the_path_and_keeps_the_extension_last(tmp_path):
    path = tmp_path / "sub" / "image.nii.gz"
    with atomic_path(path) as temporary:
        assert temporary.parent == path.parent and temporary.name.endswith(".nii.gz")
        assert temporary.name.startswith(".") and "tmp" in temporary.name and is_temporary(temporary)
        assert not path.exists()
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 3, 4), np.float32)), str(temporary))  # format from the name
    assert _names(path.parent) == ["image.nii.gz"]
    assert sitk.ReadImage(str(path)).GetSize() == (4, 3, 2)


def test_keep_name_yields_the_real_name_in_a_temporary_folder(tmp_path):
    path = tmp_path / "case.mrb"
    with atomic_path(path, keep_name=True) as temporary:
        assert temporary.name == "case.mrb" and is_temporary(temporary.parent)
        temporary.write_bytes(b"bundle")
    assert _names(tmp_path) == ["case.mrb"] and path.read_bytes() == b"bundle"


@pytest.mark.parametrize("keep_name", [False, True])
@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, error, keep_name):
    path = tmp_path / "record.json"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(type(error)):
        with atomic_path(path, keep_name=keep_name) as temporary:
            temporary.write_text("half a", encoding="utf-8")
            raise error
    assert _names(tmp_path) == ["record.json"] and path.read_text(encoding="utf-8") == "old"


def test_a_failure_before_the_first_byte_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "never.png"):
            raise RuntimeError("the writer failed")
    assert _names(tmp_path) == []


def test_a_block_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "empty.txt"):
            pass
    assert _names(tmp_path) == []


def test_text_and_json_writers(tmp_path):
    text = write_text_atomic(tmp_path / "report.md", "↓ ρ ⚠\n")
    assert text.read_text(encoding="utf-8") == "↓ ρ ⚠\n"
    record = write_json_atomic(tmp_path / "case.json", {"path": tmp_path, "n": 1})
    assert json.loads(record.read_text(encoding="utf-8")) == {"path": str(tmp_path), "n": 1}
    assert record.read_text(encoding="utf-8").endswith("}\n")
    write_json_atomic(record, {"n": 2})  # replaces an existing file
    assert json.loads(record.read_text(encoding="utf-8")) == {"n": 2}
    assert _names(tmp_path) == ["case.json", "report.md"]


def test_an_interrupted_json_write_keeps_the_previous_record(tmp_path, monkeypatch):
    import seghirescam.atomic as atomic

    record = write_json_atomic(tmp_path / "case.json", {"status": "ok"})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(record, {"status": "half"})
    assert json.loads(record.read_text(encoding="utf-8")) == {"status": "ok"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMPORARY_PREFIX)]
