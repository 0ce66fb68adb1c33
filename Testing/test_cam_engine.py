"""The engine against a slice-by-slice reference, HiResCAM's exactness, batching and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet
from reference_cam import reference_volume

import seghirescam as shc

SHAPE = (6, 20, 28)


def _volume(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=SHAPE).astype(np.float32)


def _mask(kind: str, axis: int) -> np.ndarray:
    if kind == "region":
        mask = np.zeros(SHAPE, bool)
        mask[1:5, 4:12, 9:20] = True
        mask[np.index_exp[:, :, :][:axis] + (2,)] = False  # one slice along the axis is empty
        return mask
    if kind == "point":
        return shc.pixel_set_from_points(SHAPE, [(1, 5, 7), (3, 12, 20), (4, 2, 25)], axis=axis)
    return shc.pixel_set_whole_slices(SHAPE, [0, 3], axis=axis)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("kind", ["region", "point", "whole"])
def test_engine_matches_reference(axis, kind):
    model = make_unet()
    volume, mask = _volume(), _mask(kind, axis)
    layers, methods = ("bottleneck", "dec2"), ("seg-grad-cam", "seg-hires-grad-cam", "seg-xres-cam")  # the reference knows these; the others: test_cam_agreement
    references = {(method, layer): reference_volume(model, volume, mask, 1, layer, method, axis, model.size_multiple)
                  for method in methods for layer in layers}
    for batch_size in (1, 7):
        result = shc.explain_volume(model, volume, mask, 1, layers=layers, methods=methods, axis=axis,
                                    batch_size=batch_size, device="cpu", normalize="none")
        for key, expected in references.items():
            scale = max(ref.max() for (_, layer), ref in references.items() if layer == key[1])
            np.testing.assert_allclose(result[key], expected, rtol=1e-5, atol=1e-5 * scale, err_msg=str(key))
    assert sum(ref.max() > 0 for ref in references.values()) >= 4  # the comparison is not between zeros


def test_hires_exactness_at_the_layer_feeding_the_head():
    model = make_unet(widths=(4, 8, 16, 32))
    x = torch.randn(3, 1, 32, 48)
    m = torch.zeros(3, 32, 48, dtype=torch.bool)
    m[0, 5:20, 10:30] = True
    m[1, 17, 3] = True
    m[2] = True
    maps = shc.explain_slices(model, x, m, 2, layers=("dec1",), methods=("seg-hires-grad-cam",), raw=True)
    with torch.no_grad():
        logits = model(x)
    expected = (logits[:, 2] * m).sum(dim=(1, 2)) - m.sum(dim=(1, 2)) * model.head.bias[2]
    got = maps[("seg-hires-grad-cam", "dec1")].sum(dim=(1, 2))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_batches_are_independent(small_unet):
    x = torch.randn(5, 1, 24, 24)
    m = torch.rand(5, 24, 24) > 0.7
    together = shc.explain_slices(small_unet, x, m, 1, layers=("enc2", "bottleneck"))
    for b in range(5):
        alone = shc.explain_slices(small_unet, x[b:b + 1], m[b:b + 1], 1, layers=("enc2", "bottleneck"))
        for key in together:
            torch.testing.assert_close(together[key][b], alone[key][0], rtol=1e-5, atol=1e-6)


def test_empty_slices_are_zero_and_counted(small_unet):
    volume = _volume()
    mask = np.zeros(SHAPE, bool)
    mask[[1, 4], 3:9, 5:15] = True
    result = shc.explain_volume(small_unet, volume, mask, 1, device="cpu")
    assert result.slices_explained == (1, 4)
    assert result.slices_skipped == 4
    for key in result:
        assert not result[key][[0, 2, 3, 5]].any()
        assert result[key][[1, 4]].any()


def test_normalisation_modes(small_unet):
    volume = _volume()
    mask = _mask("region", 0)
    runs = {mode: shc.explain_volume(small_unet, volume, mask, 1, normalize=mode, device="cpu")
            for mode in ("none", "volume", "slice")}
    for key in runs["none"]:
        raw = runs["none"][key]
        assert runs["volume"][key].max() == pytest.approx(1.0)
        np.testing.assert_allclose(runs["volume"][key] * raw.max(), raw, rtol=1e-6, atol=1e-9)
        for s in range(SHAPE[0]):
            top = raw[s].max()
            expected = raw[s] / top if top > 0 else raw[s]
            np.testing.assert_allclose(runs["slice"][key][s], expected, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(runs["slice"][key][s] * runs["slice"].scales[key][s], raw[s], rtol=1e-6, atol=1e-9)


def test_tiny_maps_are_not_distorted():
    stack = np.full((2, 3, 3), 1e-30, dtype=np.float32)
    stack[1] = 0
    from seghirescam.cam.normalization import normalize_maps

    normalize_maps(stack, "slice")
    assert stack[0].max() == 1.0 and not stack[1].any()


def test_progress_and_cancel(small_unet):
    volume, mask = _volume(), _mask("whole", 0)
    calls = []
    shc.explain_volume(small_unet, volume, mask, 1, batch_size=1, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]
    with pytest.raises(shc.ExplanationCancelled):
        shc.explain_volume(small_unet, volume, mask, 1, batch_size=1, cancel=lambda: len(calls) >= 3,
                           progress=lambda d, t: calls.append((d, t)))
    assert len(calls) == 3  # stopped after one more batch


def test_model_left_as_found_and_no_parameter_gradients(small_unet):
    small_unet.train()
    small_unet.enc1.eval()
    before = {k: v.clone() for k, v in small_unet.state_dict().items()}
    with pytest.warns(UserWarning, match="training mode"):
        shc.explain_volume(small_unet, _volume(), _mask("region", 0), 1, layers=("enc2", "dec3"))
    assert small_unet.training and not small_unet.enc1.training and small_unet.enc2.training
    assert all(torch.equal(before[k], v) for k, v in small_unet.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in small_unet.parameters())
    assert all(not m._forward_hooks for m in small_unet.modules())


def test_backward_stops_at_the_earliest_layer(small_unet):
    seen = {}
    hooks = [getattr(small_unet, name).register_forward_hook(lambda mod, i, out, name=name: seen.update({name: out.requires_grad}))
             for name in ("enc1", "enc2", "enc3", "bottleneck", "dec3", "dec1")]
    shc.explain_slices(small_unet, torch.randn(2, 1, 16, 16), torch.ones(2, 16, 16, dtype=torch.bool), 1,
                       layers=("bottleneck", "dec3"))
    for hook in hooks:
        hook.remove()
    assert seen == {"enc1": False, "enc2": False, "enc3": False, "bottleneck": False, "dec3": True, "dec1": True}


def test_hooks_removed_after_an_error(small_unet):
    with pytest.raises(ValueError):
        shc.explain_slices(small_unet, torch.randn(1, 1, 16, 16), torch.ones(1, 16, 16, dtype=torch.bool), 7)
    assert all(not m._forward_hooks for m in small_unet.modules())


def test_repeated_runs_do_not_leak_hooks_or_memory(small_unet):
    import gc
    import tracemalloc

    x, m = torch.randn(2, 1, 16, 16), torch.ones(2, 16, 16, dtype=torch.bool)
    for _ in range(5):
        shc.explain_slices(small_unet, x, m, 1)
    gc.collect()
    tracemalloc.start()
    first = tracemalloc.get_traced_memory()[0]
    for _ in range(100):
        shc.explain_slices(small_unet, x, m, 1)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - first
    tracemalloc.stop()
    assert grown < 200_000, grown
    assert all(not mod._forward_hooks for mod in small_unet.modules())


def test_inplace_change_of_an_explained_layer_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(3, 2, 1)).eval()
    x, m = torch.randn(1, 1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="modified in place"):
        shc.explain_slices(model, x, m, 1, layers=("0",))
    maps = shc.explain_slices(model, x, m, 1, layers=("1",))  # the ReLU's own output is kept
    assert maps[("seg-hires-grad-cam", "1")].shape == (1, 8, 8)


def test_xres_with_pool_one_equals_hires(small_unet):
    x, m = torch.randn(2, 1, 16, 24), torch.rand(2, 16, 24) > 0.5
    maps = shc.explain_slices(small_unet, x, m, 1, layers=("enc3",),
                              methods=("seg-hires-grad-cam", shc.seg_xres_cam(pool=1, reduce="mean")))
    torch.testing.assert_close(maps[("seg-hires-grad-cam", "enc3")], maps[("seg-xres-cam-p1-mean", "enc3")])


def _bad(model, **changes):
    args = dict(model=model, volume=_volume(), mask=_mask("region", 0), target_class=1)
    args.update(changes)
    return lambda: shc.explain_volume(**args)


@pytest.mark.parametrize("changes, error, message", [
    (dict(volume=np.zeros((4, 5))), ValueError, "3D"),
    (dict(mask=np.zeros((6, 20, 27), bool)), ValueError, "differs"),
    (dict(mask=np.zeros(SHAPE, np.uint8)), TypeError, "boolean"),
    (dict(target_class=3), ValueError, "3 classes"),
    (dict(target_class=-1), ValueError, "out of range"),
    (dict(target_class=1.0), TypeError, "int"),
    (dict(layers=("bottleneck", "dec9")), ValueError, "valid layers: enc1, enc2, enc3, bottleneck"),
    (dict(layers="bottleneck"), TypeError, "not a string"),
    (dict(volume=np.where(np.arange(6 * 20 * 28).reshape(SHAPE) == 7, np.nan, 0.0)), ValueError, "1 NaN or Inf"),
    (dict(mask=np.zeros(SHAPE, bool)), ValueError, "empty on every slice"),
    (dict(methods=("seg-grad-cam", "gradcam++")), ValueError, "unknown CAM method 'gradcam\\+\\+'"),
    (dict(normalize="max"), ValueError, "normalize"),
    (dict(axis=3), ValueError, "axis"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(device="cuda:0"), ValueError, "CUDA is not available"),
    (dict(autocast="fp16", device="cpu"), ValueError, "GPU"),
    (dict(autocast="fp8", device="cpu"), ValueError, "autocast must be"),
])
def test_bad_input_is_named(small_unet, changes, error, message):
    if changes.get("device") == "cuda:0" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(error, match=message):
        _bad(small_unet, **changes)()


def test_wrong_model_output_is_named():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Conv2d(3, 2, 3)).eval()  # shrinks
    with pytest.raises(ValueError, match="logits"):
        shc.explain_slices(model, torch.randn(1, 1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool), 1, layers=("0",))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_matches_cpu(small_unet):
    volume, mask = _volume(), _mask("region", 0)
    cpu = shc.explain_volume(small_unet, volume, mask, 1, device="cpu", normalize="none")
    gpu = shc.explain_volume(small_unet, volume, mask, 1, device="cuda", normalize="none")
    assert gpu.device.startswith("cuda") and next(small_unet.parameters()).device.type == "cpu"
    for key in cpu:
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-4, atol=1e-4 * cpu[key].max())


def test_out_of_memory_halves_the_batch_and_says_so(small_unet, monkeypatch):
    from seghirescam.cam import engine

    real, sizes = engine._explain_batch, []

    def tight_memory(model, x, *args):
        sizes.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, x, *args)

    volume, mask = _volume(), _mask("whole", 0)
    mask[:] = True
    expected = shc.explain_volume(small_unet, volume, mask, 1, batch_size=6)
    monkeypatch.setattr(engine, "_explain_batch", tight_memory)
    with pytest.warns(RuntimeWarning, match="retrying with batch_size=3"):
        result = shc.explain_volume(small_unet, volume, mask, 1, batch_size=6)
    assert sizes[:3] == [6, 3, 1] or sizes[:3] == [6, 3, 2]
    assert result.batch_size <= 2
    for key in expected:
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-4, atol=1e-6)


def test_auto_batch_size_fits_the_memory(small_unet, monkeypatch):
    from seghirescam.cam import runtime

    example = torch.zeros(1, 1, 64, 64)
    assert runtime.memory_batch_size(small_unet, example, n_slices=100) == 16  # cap, plenty of memory
    assert runtime.memory_batch_size(small_unet, example, n_slices=5) == 5
    monkeypatch.setattr(runtime, "_available_bytes", lambda device: 4 * 3 * 2_000_000)
    assert 1 <= runtime.memory_batch_size(small_unet, example, n_slices=100) < 16
    monkeypatch.setattr(runtime, "_available_bytes", lambda device: 0)
    assert runtime.memory_batch_size(small_unet, example, n_slices=100) == 1
