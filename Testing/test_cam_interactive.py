"""Click to explain (``cam.interactive.SliceExplainer``): the engine's maps for any M, one forward per slice.

The shipped default model on a phantom slice whose size is not a multiple of 16 (so padding is
exercised); maps compared with ``explain_slices`` for the same M. Arrays: image (C, H, W), M and maps (H, W).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet
from scipy import ndimage

from seghirescam.cam.engine import explain_slices
from seghirescam.cam.inference import predict_slices
from seghirescam.cam.interactive import SliceExplainer
from seghirescam.cam.methods import METHODS
from seghirescam.models.loading import load_default_model
from seghirescam.synthetic.phantom import make_phantom

LAYERS = ("enc3", "bottleneck", "dec2")
KIDNEY = 1

# every registered method explained from the kept graph: those that are (A, G) formulas
GRADIENT_METHODS = tuple(key for key, method in METHODS.items() if method.combine is not None)


@pytest.fixture(scope="module")
def case():
    """The default model and one preprocessed phantom slice through a kidney, (C, 90, 100)."""
    loaded = load_default_model()
    phantom = make_phantom(seed=0, shape=(8, 90, 100), spacing=(4.0, 4.0, 5.0))
    index = int(np.argmax((phantom.labels == KIDNEY).sum(axis=(1, 2))))
    image = loaded.card.preprocess(torch.from_numpy(phantom.ct[index:index + 1].astype(np.float32)))[0]
    return loaded, image


def _explainer(case, **options) -> SliceExplainer:
    loaded, image = case
    settings = {"layers": LAYERS, "methods": GRADIENT_METHODS, "normalize": "none",
                "pad_to_multiple": loaded.card.size_multiple, **options}
    return SliceExplainer(loaded.model, image, options.pop("target_class", KIDNEY), **settings)


def _reference(case, mask: np.ndarray, target: int = KIDNEY) -> dict:
    loaded, image = case
    maps = explain_slices(loaded.model, image[None], torch.from_numpy(mask)[None], target, layers=LAYERS,
                          methods=GRADIENT_METHODS, pad_to_multiple=loaded.card.size_multiple)
    return {key: value[0].numpy() for key, value in maps.items()}


def _assert_same_maps(result, reference) -> None:
    assert list(result.maps) == list(reference)
    for key, expected in reference.items():
        np.testing.assert_allclose(result[key], expected, rtol=1e-5, atol=1e-5 * max(expected.max(), 1e-12),
                                   err_msg=str(key))
    assert sum(expected.max() > 0 for expected in reference.values()) >= 6  # not a comparison between zeros


def test_every_kind_of_click_gives_the_engine_maps_with_one_forward(case):
    loaded, image = case
    explainer = _explainer(case)
    calls = []
    handle = loaded.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        predicted = explainer.prediction
        rows, cols = np.nonzero(predicted == KIDNEY)
        inside = (int(rows[len(rows) // 2]), int(cols[len(cols) // 2]))
        region = np.zeros(predicted.shape, bool)
        region[10:40, 30:80] = True
        clicks = {"mask": (explainer.explain_mask, (region,)), "pixel": (explainer.explain_pixel, (45, 61)),
                  "disc": (explainer.explain_pixel, (*inside, 3)), "component": (explainer.explain_component, inside)}
        results = {name: click(*arguments) for name, (click, arguments) in clicks.items()}
    finally:
        handle.remove()
    assert len(calls) == 1 and explainer.forward_passes == 1
    for name, result in results.items():
        assert result.mask.shape == (90, 100) and result.mask.any() and not result.ran_forward, name
        _assert_same_maps(result, _reference(case, result.mask))
    assert all(p.grad is None for p in loaded.model.parameters())  # only activations get gradients


def test_masks_of_the_clicks(case):
    explainer = _explainer(case)
    disc = explainer.explain_pixel(45, 61, radius=2).mask
    assert disc.sum() == 13 and disc[45, 61] and disc[43, 61] and not disc[43, 60]
    assert np.flatnonzero(explainer.explain_pixel(0, 99).mask).tolist() == [99]
    loaded, image = case
    with torch.no_grad():
        labels = predict_slices(loaded.model, image[None], loaded.card.size_multiple)[0].argmax(0).numpy()
    np.testing.assert_array_equal(explainer.prediction, labels)
    components, count = ndimage.label(labels == KIDNEY)
    assert count >= 1
    for label in range(1, count + 1):
        rows, cols = np.nonzero(components == label)
        np.testing.assert_array_equal(explainer.component(int(rows[0]), int(cols[0])), components == label)


def test_normalisation_divides_each_map_by_its_max(case):
    raw = _explainer(case).explain_pixel(45, 61, radius=4)
    normalised = _explainer(case, normalize="volume").explain_pixel(45, 61, radius=4)
    for key, values in raw.maps.items():
        peak = float(values.max())
        if peak > 0:
            assert normalised[key].max() == pytest.approx(1.0) and normalised.scales[key] == pytest.approx(peak)
            np.testing.assert_allclose(normalised[key] * normalised.scales[key], values, rtol=1e-5, atol=1e-7 * peak)
        else:
            assert normalised.scales[key] == 1.0 and not normalised[key].any()
        assert raw.scales[key] == 1.0
    assert normalised.score == pytest.approx(raw.score)


def test_a_click_outside_the_prediction_or_the_slice_is_refused(case):
    explainer = _explainer(case)
    background = np.argwhere(explainer.prediction != KIDNEY)[0]
    with pytest.raises(ValueError, match="outside the model's prediction of class 1"):
        explainer.explain_component(*map(int, background))
    for i, j in ((90, 0), (-1, 5), (3, 100)):
        with pytest.raises(ValueError, match="outside the slice"):
            explainer.explain_pixel(i, j)
    with pytest.raises(ValueError, match="radius"):
        explainer.explain_pixel(3, 4, radius=-1)
    with pytest.raises(ValueError, match="M is empty"):
        explainer.explain_mask(np.zeros((90, 100), bool))
    with pytest.raises(ValueError, match=r"\(H, W\) = \(90, 100\)"):
        explainer.explain_mask(np.ones((100, 90), bool))
    with pytest.raises(TypeError, match="bool"):
        explainer.explain_mask(np.ones((90, 100), np.uint8))


def test_bad_settings_fail_at_construction(case):
    loaded, image = case
    with pytest.raises(ValueError, match="C, H, W"):
        SliceExplainer(loaded.model, image[0], KIDNEY)
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        SliceExplainer(loaded.model, image, KIDNEY, layers=("nope",))
    with pytest.raises(ValueError, match="unknown CAM method"):
        SliceExplainer(loaded.model, image, KIDNEY, methods=("nope",))
    with pytest.raises(ValueError, match="out of range"):
        SliceExplainer(loaded.model, image, 7)
    with pytest.raises(ValueError, match="NaN"):
        SliceExplainer(loaded.model, torch.full_like(image, float("nan")), KIDNEY)


def test_perturbation_methods_are_refused_with_a_reason(case):
    loaded, image = case
    perturbation = [key for key, method in METHODS.items() if method.cost == "perturbation"]
    assert perturbation  # Seg-Ablation CAM, Seg-Score CAM
    for key in perturbation:
        with pytest.raises(ValueError, match=f"{key} needs many forward passes per map"):
            SliceExplainer(loaded.model, image, KIDNEY, methods=("seg-hires-grad-cam", key))


def test_methods_with_their_own_passes_match_the_engine_too(case):
    """CAM's head lookup, FullGrad and LIFT-CAM run their extra passes per click, from the kept A and G."""
    loaded, image = case
    methods = [key for key, method in METHODS.items() if method.cost == "forward"]
    assert {"seg-cam", "seg-fullgrad", "seg-lift-cam"} <= set(methods)
    explainer = SliceExplainer(loaded.model, image, KIDNEY, layers=("dec1",), methods=methods, normalize="none",
                               pad_to_multiple=loaded.card.size_multiple)
    for radius in (0, 4):
        result = explainer.explain_pixel(45, 61, radius=radius)
        maps = explain_slices(loaded.model, image[None], torch.from_numpy(result.mask)[None], KIDNEY, layers=("dec1",),
                              methods=methods, pad_to_multiple=loaded.card.size_multiple)
        for key, values in maps.items():
            expected = values[0].numpy()
            np.testing.assert_allclose(result[key], expected, rtol=1e-5, atol=1e-5 * max(expected.max(), 1e-12),
                                       err_msg=str(key))
        assert sum(values.max() > 0 for values in maps.values()) >= 2
    assert explainer.forward_passes == 1


def test_model_and_image_are_left_as_found():
    model = make_unet().train()
    image = torch.randn(1, 24, 40)
    before = image.clone()
    explainer = SliceExplainer(model, image, 2, layers=("bottleneck",), device="cpu")
    with pytest.warns(UserWarning, match="training mode"):
        result = explainer.explain_pixel(5, 7, radius=1)
    assert all(module.training for module in model.modules())
    assert torch.equal(image, before)
    with torch.no_grad():
        model.eval()
        expected = explain_slices(model, image[None], torch.from_numpy(result.mask)[None], 2, layers=("bottleneck",))
    for key, values in expected.items():
        peak = float(values.max())
        np.testing.assert_allclose(result[key] * result.scales[key], values[0].numpy(), rtol=1e-5, atol=1e-5 * peak)
    explainer.release()
    assert not explainer.ready
    explainer.explain_pixel(1, 1)
    assert explainer.forward_passes == 2


def test_the_readme_click_example_runs_as_written(real_ct_dir):
    """README's "Click to explain" block, run as written on the real CT: one forward, the engine's maps."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### Click to explain.*?```python\n(.*?)```", text, re.S).group(1)
    assert 'data = Path("../shared/data/ct-abdomen-totalseg")' in block
    namespace: dict = {}
    exec(block.replace('Path("../shared/data/ct-abdomen-totalseg")', f"Path({str(real_ct_dir)!r})"), namespace)
    explainer, kidney = namespace["explainer"], namespace["kidney"]
    assert explainer.forward_passes == 1 and kidney.mask.sum() > 100
    assert kidney.mask[60, 38] and explainer.prediction[kidney.mask].tolist() == [KIDNEY] * int(kidney.mask.sum())
    reference = explain_slices(explainer.model, explainer.image[None], torch.from_numpy(kidney.mask)[None], KIDNEY,
                               layers=("bottleneck",), pad_to_multiple=explainer.multiple)
    for key, values in reference.items():
        expected = values[0].numpy()
        np.testing.assert_allclose(kidney[key] * kidney.scales[key], expected, rtol=1e-5, atol=1e-5 * expected.max())
    assert namespace["hires"].max() == pytest.approx(1.0)


def test_clicks_inside_inference_mode_give_the_same_maps(case):
    """A caller inside ``torch.inference_mode()`` (an inference tensor as the slice) gets the engine's maps."""
    loaded, image = case
    region = np.zeros(tuple(image.shape[1:]), bool)
    region[10:40, 30:80] = True
    with torch.inference_mode():
        frozen = image.clone()
        explainer = SliceExplainer(loaded.model, frozen, KIDNEY, layers=LAYERS, methods=GRADIENT_METHODS,
                                   normalize="none", pad_to_multiple=loaded.card.size_multiple)
        first, second = explainer.explain_mask(region), explainer.explain_pixel(45, 61)
    assert frozen.is_inference() and explainer.forward_passes == 1
    _assert_same_maps(first, _reference(case, region))
    _assert_same_maps(second, _reference(case, second.mask))
