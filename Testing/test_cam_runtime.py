"""Runtime choices of the engine: batch size without a probe on the CPU, the channels-last copy, bf16,
inference mode, and volumes stored with the slicing axis last (the KiTS23 layout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet

import seghirescam as shc
from seghirescam.cam import runtime
from seghirescam.imaging.volumes import SliceOrientation

METHOD_KEYS = ("seg-grad-cam", "seg-hires-grad-cam", "seg-xres-cam")  # the gradient methods of issue 14


class CountingModel(torch.nn.Module):
    """Wraps a model and counts its forward passes."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0
        self.size_multiple = getattr(model, "size_multiple", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def _volume_and_mask(shape=(5, 24, 32), seed=3):
    rng = np.random.default_rng(seed)
    volume = rng.normal(size=shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[1:4, 6:15, 9:22] = True
    return volume, mask


def test_cpu_auto_batch_size_runs_no_probe_forward():
    model = CountingModel(make_unet()).eval()
    volume, mask = _volume_and_mask()
    result = shc.explain_volume(model, volume, mask, 1, layers=("model.bottleneck",), device="cpu",
                                channels_last=False)  # the default would count on its channels-last copy
    assert model.calls == 1  # one forward: the batch of the 3 slices holding M, no probe
    assert result.batch_size == 3
    example = torch.zeros(1, 1, 512, 512)
    assert runtime.auto_batch_size(model, example, 100) == 1  # the pixel cap alone: 2 x 256^2 pixels
    assert runtime.auto_batch_size(model, torch.zeros(1, 1, 256, 256), 100) == 2
    assert model.calls == 1


def test_memory_probe_runs_once_per_model_and_size(monkeypatch):
    model = CountingModel(make_unet()).eval()
    monkeypatch.setattr(runtime, "_available_bytes", lambda device: 10**12)
    for _ in range(3):
        runtime.memory_batch_size(model, torch.zeros(1, 1, 32, 32), 50)
    assert model.calls == 1
    runtime.memory_batch_size(model, torch.zeros(1, 1, 64, 64), 50)
    assert model.calls == 2
    copy = CountingModel(make_unet()).eval()
    runtime.memory_batch_size(copy, torch.zeros(1, 1, 32, 32), 50, owner=model)  # remembered for the owner
    assert copy.calls == 0


@pytest.fixture(scope="module")
def real_slices():
    """Three slices of the shared real CT through the left kidney, preprocessed, and the default model."""
    from conftest import require_real_ct

    path = require_real_ct()
    loaded = shc.load_default_model()
    ct, labels = shc.read_volume(path), shc.read_volume(path.parent / "example_seg_fast_force_split.nii.gz")
    assert labels.array.shape == ct.array.shape  # TotalSegmentator's labels on the CT's grid
    orientation = SliceOrientation.from_geometry(ct.geometry)
    slices, mask = orientation.to_slices(ct.array), orientation.to_slices(labels.array == 3)
    todo = np.flatnonzero(mask.any(axis=(1, 2)))
    pick = todo[len(todo) // 2 - 1: len(todo) // 2 + 2]
    x = loaded.card.preprocess(torch.from_numpy(np.ascontiguousarray(slices[pick], dtype=np.float32)))
    return loaded, x, torch.from_numpy(np.ascontiguousarray(mask[pick]))


def test_channels_last_equals_nchw_on_the_real_ct(real_slices):
    loaded, x, m = real_slices
    layers = ("bottleneck", "dec2", "dec3")
    before = [p.detach().clone() for p in loaded.model.parameters()]
    nchw = shc.explain_slices(loaded.model, x, m, 1, layers=layers, methods=METHOD_KEYS, channels_last=False)
    fast = shc.explain_slices(loaded.model, x, m, 1, layers=layers, methods=METHOD_KEYS)  # the CPU default
    assert runtime.channels_last_model(loaded.model) is not loaded.model  # the default did run channels-last
    for key, expected in nchw.items():
        assert expected.max() > 0, key
        difference = (fast[key] - expected).abs().max() / expected.abs().max()
        assert difference <= 1e-6, (key, float(difference))
    for old, new in zip(before, loaded.model.parameters()):  # the caller's model is untouched
        assert new.is_contiguous() and torch.equal(old, new)


def test_channels_last_copy_follows_the_weights():
    model = make_unet()
    first = runtime.channels_last_model(model)
    assert runtime.channels_last_model(model) is first
    assert first.enc1[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model.enc1[0].weight.mul_(2)
    second = runtime.channels_last_model(model)
    assert second is not first and torch.equal(second.enc1[0].weight, model.enc1[0].weight)


def test_bf16_is_refused_without_hardware(monkeypatch):
    volume, mask = _volume_and_mask()
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16 needs bfloat16 arithmetic in hardware, and this CPU has none"):
        shc.explain_volume(make_unet(), volume, mask, 1, device="cpu", autocast="bf16")
    with pytest.raises(ValueError, match="this CPU has none"):
        shc.explain_slices(make_unet(), torch.zeros(1, 1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool), 1,
                           autocast="bf16")


def test_bf16_runs_where_the_cpu_has_it(monkeypatch):
    model = make_unet()
    volume, mask = _volume_and_mask()
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)  # emulated here, but the same code path
    exact = shc.explain_volume(model, volume, mask, 1, device="cpu")
    preview = shc.explain_volume(model, volume, mask, 1, device="cpu", autocast="bf16")
    for key in exact:
        difference = np.abs(preview[key] - exact[key]).max()
        assert 0 < difference < 0.2, (key, difference)  # bf16 keeps 8 bits of mantissa: close, not equal


def test_cpu_bf16_detector_agrees_with_torch():
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the x86 flags are read on x86 only")
    runtime.cpu_supports_bf16.cache_clear()
    assert runtime.cpu_supports_bf16() == bool(torch.cpu._is_avx512_bf16_supported()
                                               or torch.cpu._is_amx_tile_supported())


def test_engine_works_inside_inference_mode():
    model = make_unet()
    volume, mask = _volume_and_mask()
    expected = shc.explain_volume(model, volume, mask, 1, device="cpu", layers=("bottleneck", "dec2"))
    x, m = torch.from_numpy(volume[1:4, None]), torch.from_numpy(mask[1:4])
    slices = shc.explain_slices(model, x, m, 1, layers=("dec2",))
    with torch.inference_mode():
        result = shc.explain_volume(model, volume, mask, 1, device="cpu", layers=("bottleneck", "dec2"))
        x_inference = torch.from_numpy(volume[1:4, None]) * 1.0  # an inference tensor
        assert x_inference.is_inference()
        inside = shc.explain_slices(model, x_inference, torch.from_numpy(mask[1:4]), 1, layers=("dec2",))
        assert torch.is_inference_mode_enabled()  # the caller's mode is back
    for key in expected:
        np.testing.assert_array_equal(result[key], expected[key])
    torch.testing.assert_close(inside[("seg-hires-grad-cam", "dec2")], slices[("seg-hires-grad-cam", "dec2")])


def test_engine_works_with_frozen_parameters():
    model = make_unet()
    volume, mask = _volume_and_mask()
    expected = shc.explain_volume(model, volume, mask, 1, device="cpu", layers=("bottleneck", "dec2"))
    model.requires_grad_(False)
    result = shc.explain_volume(model, volume, mask, 1, device="cpu", layers=("bottleneck", "dec2"))
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert sum(expected[key].max() > 0 for key in expected) >= 3  # the comparison is not between zeros
    for key in expected:
        np.testing.assert_array_equal(result[key], expected[key])


def test_a_kits_stored_ct_gives_the_axial_maps_without_copies():
    from seghirescam.imaging.geometry import Geometry
    from seghirescam.imaging.volumes import Volume
    from seghirescam.synthetic.phantom import make_phantom

    loaded = shc.load_default_model()
    phantom = make_phantom(5, shape=(8, 64, 64), spacing=(6.0, 6.0, 5.0), tumor=True)
    axial = Volume(phantom.ct, Geometry((6.0, 6.0, 5.0), (0.0, 0.0, 0.0)))
    # Stored the KiTS23 way: (k, j, i) = (left-right, posterior, inferior), the axial axis last, direction IPL.
    to_kits = lambda a: np.ascontiguousarray(a.transpose(2, 1, 0)[:, :, ::-1])  # noqa: E731
    kits = Volume(to_kits(phantom.ct), Geometry((5.0, 6.0, 6.0), (0.0, 0.0, 0.0), (0, 0, 1.0, 0, 1.0, 0, -1.0, 0, 0)))
    mask = phantom.labels == 1
    expected = shc.explain_ct(axial, mask, loaded, 1, device="cpu")
    result = shc.explain_ct(kits, to_kits(mask), loaded, 1, device="cpu")
    assert result.axis == 2 and expected.axis == 0
    assert expected[("seg-hires-grad-cam", "bottleneck")].max() > 0
    for key, values in expected.maps.items():
        assert result[key].shape == kits.array.shape and result[key].base is not None  # a view, not a copy
        np.testing.assert_allclose(result[key], to_kits(values), rtol=0, atol=1e-6)


def test_cpu_auto_batch_prepares_each_slice_once():
    prepared = []

    def preprocess(slices: torch.Tensor) -> torch.Tensor:
        prepared.append(len(slices))
        return slices[:, None]

    volume, mask = _volume_and_mask()
    result = shc.explain_volume(make_unet(), volume, mask, 1, layers=("bottleneck",), device="cpu",
                                preprocess=preprocess)
    assert result.batch_size == 3
    assert prepared == [3]  # the batch of the 3 slices holding M; no slice is prepared to size the batch


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_volume_check_counts_non_finite_values_without_a_volume_sized_copy(bad):
    import tracemalloc

    from seghirescam.cam.validation import check_volume_inputs

    volume = np.random.default_rng(0).normal(size=(16, 128, 128)).astype(np.float32)  # 1 MiB
    mask = np.ones(volume.shape, bool)
    tracemalloc.start()
    try:
        check_volume_inputs(volume, mask, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < volume.size // 8  # no temporary of the volume's shape, not even a bool one
    volume[3, 5, 7] = volume[9, 0, 1] = bad
    with pytest.raises(ValueError, match="2 NaN or Inf"):
        check_volume_inputs(volume, mask, 0)
