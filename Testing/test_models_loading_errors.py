"""Bad model files, cards and manifests: one clear message naming the file and the cause, never a traceback.

The format of a model file is sniffed from its bytes (``models.weights.sniff_model_file``), so a
file is judged by what it holds, not by its name; nothing is unpickled beyond tensors.
"""

from __future__ import annotations

import copy
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import seghirescam as shc
from seghirescam.cli import main
from seghirescam.cohort.manifest import ManifestError, read_manifest
from seghirescam.cohort.runner import BatchSettings, run_batch
from seghirescam.models.card import CardError, ModelCard
from seghirescam.models.explainable import load_explainable_model
from seghirescam.models.factory import FactoryError
from seghirescam.models.loading import card_path_for, load_model, save_model, unet_card
from seghirescam.models.unet import UNet2D
from seghirescam.models.weights import read_state_dict, sniff_model_file

CLASSES = ("background", "kidney", "tumor", "cyst")


@pytest.fixture(scope="module")
def tiny() -> tuple[UNet2D, ModelCard]:
    torch.manual_seed(0)
    model = UNet2D(1, 4, (4, 8)).eval()
    return model, unet_card(model, "tiny", CLASSES)


@pytest.fixture
def good(tmp_path, tiny) -> Path:
    model, card = tiny
    return save_model(model, card, tmp_path / "good.safetensors")


def _torch_save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _as(tmp_path: Path, good: Path, name: str, data: bytes) -> Path:
    """``data`` saved as ``name`` with the good model's card beside it."""
    path = tmp_path / name
    path.write_bytes(data)
    card_path_for(path).write_bytes(card_path_for(good).read_bytes())
    return path


def _foreign_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    return buffer.getvalue()


BAD_FILES = {  # name: (bytes from the good safetensors and the model, what the message must say)
    "whole_model_named.safetensors": (lambda st, m: _torch_save(m), r"pickled Python objects.*the file is a torch"
                                      r"\.save archive, though named \.safetensors.*arbitrary code"),
    "plain_pickle_named.safetensors": (lambda st, m: __import__("pickle").dumps({"a": object}, protocol=4),
                                       r"pickled Python objects.*the file is a Python pickle"),
    "foreign_zip_named.ts": (lambda st, m: _foreign_zip(), "a zip archive that is neither TorchScript nor"),
    "truncated.safetensors": (lambda st, m: st[: len(st) // 2], "truncated or damaged safetensors"),
    "header_truncated.safetensors": (lambda st, m: st[:20], "truncated or damaged safetensors"),
    "random.safetensors": (lambda st, m: np.random.default_rng(0).bytes(4096), "no model format SegHiResCAM knows"),
    "empty.safetensors": (lambda st, m: b"", r"an empty file \(0 bytes\)"),
    "truncated.pt": (lambda st, m: _torch_save(m.state_dict())[:3000], "damaged or truncated zip archive"),
    "broken_header.safetensors": (lambda st, m: st[:8] + b"{" + b"x" * (len(st) - 9), "truncated or damaged safetensors"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_model_file_gives_one_message_naming_it(tmp_path, good, tiny, name):
    make, message = BAD_FILES[name]
    path = _as(tmp_path, good, name, make(good.read_bytes(), tiny[0]))
    before = path.read_bytes()
    with pytest.raises(CardError, match=message) as caught:
        load_explainable_model(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["weights.pt", "weights.ts", "weights.bin"])
def test_safetensors_under_another_name_loads_by_its_bytes(tmp_path, good, tiny, name):
    path = _as(tmp_path, good, name, good.read_bytes())
    assert sniff_model_file(path) == "safetensors"
    loaded = load_model(path)
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(loaded.model(x), tiny[0](x))


def test_state_dict_zip_named_ts_loads_as_weights(tmp_path, good, tiny):
    path = _as(tmp_path, good, "state.ts", _torch_save(tiny[0].state_dict()))
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(load_model(path).model(x), tiny[0](x))


@pytest.mark.parametrize("name", ["truncated.safetensors", "whole_model_named.safetensors", "empty.safetensors"])
def test_factory_weights_get_the_same_messages(tmp_path, good, tiny, name):
    make, message = BAD_FILES[name]
    path = _as(tmp_path, good, name, make(good.read_bytes(), tiny[0]))
    with pytest.raises(FactoryError, match=message):
        read_state_dict(path, FactoryError)


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 4, r"not a JSON text file \(byte 128 is not UTF-8"),
    (b"[1, 2]", "must be a JSON object, not a list"),
    (b"{\"format\": ", "not valid JSON"),
])
def test_bad_card_is_named(tmp_path, good, content, message):
    card = card_path_for(good)
    card.write_bytes(content)
    with pytest.raises(CardError, match=message) as caught:
        load_model(good)
    assert str(card) in str(caught.value)


def test_card_field_of_the_wrong_kind_is_named(tmp_path, good):
    card = card_path_for(good)
    card.write_text(card.read_text().replace('"hu_clip": [', '"hu_clip": "x", "unused": ['))
    with pytest.raises(CardError) as caught:
        load_model(good)
    assert str(card) in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_weights_of_another_dtype_are_explained_in_float32(tmp_path, tiny, dtype):
    model, card = tiny
    path = tmp_path / "other.safetensors"
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}, str(path))
    card.save(card_path_for(path))
    loaded = load_model(path)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_engine_explains_a_copy_in_float32_and_leaves_the_callers_model(tiny, dtype):
    model = copy.deepcopy(tiny[0]).to(dtype)
    volume = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
    mask = np.zeros(volume.shape, bool)
    mask[:, 4:9, 4:9] = True
    reference = shc.explain_volume(copy.deepcopy(model).float(), volume, mask, 1, layers=["bottleneck"], device="cpu")
    result = shc.explain_volume(model, volume, mask, 1, layers=["bottleneck"], device="cpu")
    assert {p.dtype for p in model.parameters()} == {dtype}  # the caller's model is untouched
    for key, expected in reference.maps.items():
        np.testing.assert_array_equal(result.maps[key], expected)


def test_foreign_torchscript_in_float64_is_loaded_in_float32(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1)).double().eval()
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    card = ModelCard("foreign", {"type": "torchscript", "in_channels": 1, "num_classes": 3}, ("bg", "a", "b"))
    loaded = load_model(tmp_path / "net.ts", card)
    assert loaded.model(torch.zeros(1, 1, 8, 8)).dtype == torch.float32


def test_binary_or_unparsable_manifest_is_named(tmp_path):
    binary, huge = tmp_path / "binary.csv", tmp_path / "huge.csv"
    binary.write_bytes(b"case_id,ct,seg,segment\n\xff\xfe\x00a,b,c,d\n")
    huge.write_bytes(b"case_id,ct,seg,segment\na,\"" + b"x" * 200_000 + b"\",c,d\n")  # over csv's field limit
    for path, message in ((binary, "not a UTF-8 CSV text file"), (huge, "not a readable CSV file.*field limit")):
        with pytest.raises(ManifestError, match=message) as caught:
            read_manifest(path)
        assert str(path) in str(caught.value)


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_batch_checks_the_model_once_before_any_case(tmp_path, good, tiny, executor):
    bad = _as(tmp_path, good, "bad.safetensors", good.read_bytes()[:100])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case_id,ct,seg,segment\n" + "".join(f"c{n},ct.nii.gz,seg.nii.gz,1\n" for n in range(3)))
    out = tmp_path / "out"
    with pytest.raises(CardError, match="truncated or damaged safetensors"):
        run_batch(manifest, out, BatchSettings(model=str(bad)), executor=executor, progress=False)
    assert not out.exists()  # no case ran, nothing was written


def test_cli_bad_model_exits_2_with_one_line(tmp_path, good, tiny, capsys):
    bad = _as(tmp_path, good, "bad.safetensors", b"")
    code = main(["explain", "--out", str(tmp_path / "out"), "--ct", os.devnull, "--seg", os.devnull, "--label", "1",
                 "--model", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"seghirescam explain: error: {bad} cannot be loaded: it is an empty file "
                                        "(0 bytes); SegHiResCAM loads safetensors, a torch.save state dict, or "
                                        "TorchScript"]
