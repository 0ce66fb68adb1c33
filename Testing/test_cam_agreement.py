"""The registered CAMs agree with the reference implementations on a small U-Net.

For every method pytorch-grad-cam 1.5.7 implements, its classification implementation is driven by a
segmentation target (its ``SemanticSegmentationTarget``: the sum of the class-c logits over M) and
compared with the engine's map after the same normalisation (pytorch-grad-cam's ``scale_cam_image``
on the ReLU'd layer map, resized to the input; FullGrad: on its input-resolution map): max abs
difference < 1e-4. LIFT-CAM is compared with captum's DeepLift (zero reference at the layer), CAM
with the head's decomposition of the logit map, FullGrad's raw terms with its completeness.

pytorch-grad-cam imports torchvision at module level (for functions these methods never call); the
session blocks torchvision (conftest), so a stub module stands in while pytorch-grad-cam is imported,
and the blocking is restored afterwards.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types

import numpy as np
import pytest
import torch
from conftest import make_unet, require_module
from torch import nn

from seghirescam.cam.engine import explain_slices, explain_volume, forward_with_graph, gradient_maps, layer_maps
from seghirescam.cam.fullgrad import fullgrad_terms
from seghirescam.cam.methods import METHODS, resolve_methods, seg_score_cam
from seghirescam.cam.result import ExplanationCancelled
from seghirescam.cam.tiles import explain_tiles

TOLERANCE = 1e-4
TARGET_CLASS = 1
_STUBBED = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _unavailable(*_args, **_kwargs):
    raise RuntimeError("torchvision is stubbed in this test; pytorch-grad-cam's CAM methods do not need it")


@pytest.fixture(scope="module")
def grad_cam():
    """pytorch-grad-cam imported beside a stub torchvision; the session's blocking restored afterwards."""
    saved = {name: sys.modules.get(name, None) for name in _STUBBED}
    stub = types.ModuleType("torchvision")
    stub.transforms = types.ModuleType("torchvision.transforms")
    stub.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    stub.transforms.Compose = stub.transforms.Normalize = stub.transforms.ToTensor = _unavailable
    stub.transforms.functional.resize = _unavailable
    sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms,
                        "torchvision.transforms.functional": stub.transforms.functional})
    try:
        module = require_module("pytorch_grad_cam")
        for name in ("eigen_cam", "eigen_grad_cam", "score_cam", "utils.image", "utils.model_targets",
                     "utils.svd_on_activations"):
            importlib.import_module(f"pytorch_grad_cam.{name}")
        yield module
    finally:
        for name in _STUBBED:
            if saved[name] is None:
                sys.modules[name] = None  # type: ignore[assignment]
            else:
                sys.modules[name] = saved[name]
        for name in [n for n in sys.modules if n == "pytorch_grad_cam" or n.startswith("pytorch_grad_cam.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def case():
    """A small U-Net (bottleneck: 32 channels of 4 x 4), two 32 x 32 slices and their M."""
    model = make_unet(widths=(4, 8, 16), num_classes=3, seed=2)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 32, 32, generator=generator)
    m = torch.zeros(2, 32, 32, dtype=torch.bool)
    m[0, 8:20, 10:24] = True
    m[1, 18:28, 4:12] = True
    return model, x, m


def _ours(model, x, m, key, layer) -> np.ndarray:
    method = key if not isinstance(key, str) else METHODS[key]
    raw = explain_slices(model, x, m, TARGET_CLASS, layers=[layer], methods=[method], raw=True)
    return raw[(method.key, layer)].numpy()


def _normalised(grad_cam, raw: np.ndarray, size: tuple[int, int], *, full_grad: bool = False) -> np.ndarray:
    """pytorch-grad-cam's own normalisation: per layer ReLU, scale and resize; then scale the aggregate."""
    scale = grad_cam.utils.image.scale_cam_image
    if full_grad:
        return scale(raw)
    return scale(scale(np.maximum(raw, 0), (size[1], size[0])))


def _theirs(grad_cam, cam_class, model, x, m, layer, **options) -> np.ndarray:
    target_type = grad_cam.utils.model_targets.SemanticSegmentationTarget
    targets = [target_type(TARGET_CLASS, mask.numpy().astype(np.float32)) for mask in m]
    layers = [] if layer is None else [dict(model.named_modules())[layer]]
    cam = cam_class(model=model, target_layers=layers, **options)
    try:
        return cam(input_tensor=x.clone(), targets=targets)
    finally:
        cam.activations_and_grads.release()


# key -> pytorch-grad-cam class name
PAIRS = {"seg-grad-cam": "GradCAM", "seg-hires-grad-cam": "HiResCAM", "seg-grad-cam-pp": "GradCAMPlusPlus",
         "seg-xgrad-cam": "XGradCAM", "seg-layer-cam": "LayerCAM", "seg-eigen-cam": "EigenCAM",
         "seg-eigengrad-cam": "EigenGradCAM", "seg-ablation-cam": "AblationCAM", "seg-score-cam": "ScoreCAM"}


@pytest.mark.parametrize("layer", ["bottleneck", "dec2"])
@pytest.mark.parametrize("key", list(PAIRS))
def test_layer_methods_agree_with_pytorch_grad_cam(grad_cam, case, monkeypatch, key, layer):
    model, x, m = case
    if key in ("seg-eigen-cam", "seg-eigengrad-cam"):
        # The principal component's sign is arbitrary: both sides use pytorch-grad-cam's sign correction.
        corrected = grad_cam.utils.svd_on_activations.get_2d_projection_with_sign_correction
        module = {"seg-eigen-cam": "eigen_cam", "seg-eigengrad-cam": "eigen_grad_cam"}[key]
        monkeypatch.setattr(importlib.import_module(f"pytorch_grad_cam.{module}"), "get_2d_projection", corrected)
    if key == "seg-score-cam":
        # The registered Score-CAM weighs channels by the raw logit sum; pytorch-grad-cam takes a softmax over
        # channels (compared below as the "softmax" variant): here its softmax is the identity.
        monkeypatch.setattr(torch.nn, "Softmax", lambda dim: (lambda scores: scores))
    theirs = _theirs(grad_cam, getattr(grad_cam, PAIRS[key]), model, x, m, layer)
    monkeypatch.undo()
    ours = _normalised(grad_cam, _ours(model, x, m, key, layer), x.shape[-2:])
    assert (theirs.reshape(len(theirs), -1).max(1) > 0.5).all(), "a reference map is empty: it would prove nothing"
    assert np.abs(ours - theirs).max() < TOLERANCE


def test_score_cam_softmax_variant_is_pytorch_grad_cams_weighting(grad_cam, case):
    model, x, m = case
    variant = seg_score_cam("softmax")
    assert variant.key == "seg-score-cam-softmax" and variant.key not in METHODS
    theirs = _theirs(grad_cam, grad_cam.ScoreCAM, model, x, m, "dec2")
    ours = _normalised(grad_cam, _ours(model, x, m, variant, "dec2"), x.shape[-2:])
    assert np.abs(ours - theirs).max() < TOLERANCE


def test_fullgrad_agrees_with_pytorch_grad_cam(grad_cam, case):
    model, x, m = case
    # pytorch-grad-cam 1.5.7 collects only Conv2d and BatchNorm2d biases; ours every conv, transposed conv
    # and batch-norm bias. With the transposed convolutions' biases at zero both sets give the same map.
    model = make_unet(widths=(4, 8, 16), num_classes=3, seed=2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.ConvTranspose2d):
                module.bias.zero_()
    theirs = _theirs(grad_cam, grad_cam.FullGrad, model, x, m, None)
    ours = _normalised(grad_cam, _ours(model, x, m, "seg-fullgrad", "bottleneck"), x.shape[-2:], full_grad=True)
    assert theirs.max() > 0.5 and np.abs(ours - theirs).max() < TOLERANCE


def test_fullgrad_terms_are_complete_for_the_u_net(case):
    """x.dy/dx + sum over every bias b.dy/db = y for a ReLU network: fails if any bias (e.g. a transposed conv's) is missed."""
    model, x, m = case
    input_term, bias_terms, scores = fullgrad_terms(model, x, m, TARGET_CLASS)
    total = input_term.double().flatten(1).sum(1) + sum(term.double().flatten(1).sum(1) for term in bias_terms)
    assert torch.allclose(total, scores.double(), rtol=1e-4, atol=1e-3)
    assert len(bias_terms) == sum(isinstance(mod, (nn.BatchNorm2d, nn.ConvTranspose2d)) for mod in model.modules()) + 1


class _Tail(nn.Module):
    """y_M per batch element as a function of the layer's activations A (x fixed): captum's forward."""

    def __init__(self, model: nn.Module, layer: str, x: torch.Tensor, m: torch.Tensor) -> None:
        super().__init__()
        self.model, self.layer, self.x, self.m = model, dict(model.named_modules())[layer], x, m

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        repeats = a.shape[0] // self.x.shape[0]
        handle = self.layer.register_forward_hook(lambda _module, _inputs, _output: a)
        try:
            logits = self.model(self.x.repeat(repeats, 1, 1, 1))
        finally:
            handle.remove()
        return (logits[:, TARGET_CLASS] * self.m.repeat(repeats, 1, 1)).flatten(1).sum(1)


@pytest.mark.filterwarnings("ignore:.*(did not already require gradients|hooks and attributes).*:UserWarning")
@pytest.mark.parametrize("layer", ["bottleneck", "dec2"])
def test_lift_cam_agrees_with_captums_deeplift(case, layer):
    captum_attr = require_module("captum.attr")
    model, x, m = case
    a = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _mod, _inp, out: a.update(a=out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    attributions = captum_attr.DeepLift(_Tail(model, layer, x, m)).attribute(a["a"], baselines=torch.zeros_like(a["a"]))
    alpha = attributions.sum(dim=(2, 3), keepdim=True)
    reference = (alpha * a["a"]).sum(1).detach().numpy()
    ours = _ours(model, x, m, "seg-lift-cam", layer)
    assert np.abs(reference).max() > 0
    assert np.abs(ours - reference).max() < TOLERANCE * np.abs(reference).max()
    # The Rescale rule matters here: plain gradients (Grad-CAM's weights x sum A) differ.
    gradient_weights = explain_slices(model, x, m, TARGET_CLASS, layers=[layer], methods=["seg-xgrad-cam"], raw=True)
    assert np.abs(gradient_weights[("seg-xgrad-cam", layer)].numpy() - reference).max() > 1e-3 * np.abs(reference).max()


def test_cam_is_the_heads_decomposition_of_the_logit_map_and_refused_elsewhere(case):
    model, x, m = case
    ours = _ours(model, x, m, "seg-cam", "dec1")
    with torch.no_grad():
        logits = model(x)
    expected = (logits[:, TARGET_CLASS] - model.head.bias[TARGET_CLASS]).detach().numpy()
    assert np.abs(ours - expected).max() < 1e-5 * np.abs(expected).max()
    with pytest.raises(ValueError, match="layer 'bottleneck' does not feed one: for this model CAM applies at 'dec1'"):
        _ours(model, x, m, "seg-cam", "bottleneck")


def _volumetric_net() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(),
                         nn.Conv3d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 3, 1)).eval()


def test_every_method_runs_on_a_volumetric_network_and_ablation_restarts_at_the_layer(monkeypatch):
    net = _volumetric_net()
    x = torch.randn(1, 1, 6, 8, 8)
    weights = torch.zeros(1, 6, 8, 8)
    weights[0, 2:4, 3:6, 3:6] = 1
    maps, _ = layer_maps(net, x, weights, 1, ["4"], resolve_methods(list(METHODS)))
    for (key, _layer), value in maps.items():
        assert value.shape == ((1, 6, 8, 8)) and torch.isfinite(value).all(), key
    restarted = maps[("seg-ablation-cam", "4")]
    monkeypatch.setattr("seghirescam.cam.perturbation.sequential_tail", lambda _model, _layer: None)
    full_forward, _ = layer_maps(net, x, weights, 1, ["4"], [METHODS["seg-ablation-cam"]])
    assert torch.allclose(full_forward[("seg-ablation-cam", "4")], restarted, atol=1e-6)
    assert restarted.abs().max() > 0
    # CAM at the layer feeding the 1x1 head equals the logit map minus its bias, in 3D too.
    with torch.no_grad():
        expected = net(x)[:, 1] - net[5].bias[1]
    assert torch.allclose(maps[("seg-cam", "4")], expected, atol=1e-5)


def test_tiled_models_refuse_the_methods_whose_tile_maps_do_not_add_up():
    net = _volumetric_net()
    data, mask = torch.randn(1, 6, 8, 8), torch.ones(6, 8, 8, dtype=torch.bool)
    tile = (slice(None), slice(0, 6), slice(0, 8), slice(0, 8))
    with pytest.raises(ValueError, match="seg-score-cam, seg-fullgrad cannot explain a sliding-window"):
        explain_tiles(net, data, mask, [tile], torch.ones(6, 8, 8), 1, ["4"],
                      [METHODS["seg-score-cam"], METHODS["seg-fullgrad"]])
    explained = explain_tiles(net, data, mask, [tile], torch.ones(6, 8, 8), 1, ["4"], [METHODS["seg-lift-cam"]])
    assert explained.maps[("seg-lift-cam", "4")].max() > 0


def test_perturbation_runs_log_their_cost_skip_empty_slices_and_cancel(case, caplog):
    model, _x, _m = case
    volume = np.random.default_rng(0).normal(size=(5, 32, 32)).astype(np.float32)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[1, 10:20, 10:20] = mask[3, 4:9, 4:9] = True
    with caplog.at_level(logging.INFO, logger="seghirescam.cam.perturbation"):
        result = explain_volume(model, volume, mask, TARGET_CLASS, methods=["seg-ablation-cam", "seg-score-cam"],
                                device="cpu", batch_size=1)
    assert "seg-ablation-cam, seg-score-cam: 128 extra forward passes" in caplog.text  # 2 methods x 2 slices x 32
    assert result.slices_explained == (1, 3)
    for key in result:
        assert result[key][[0, 2, 4]].max() == 0 and result[key][[1, 3]].max() > 0
    asked = []
    with pytest.raises(ExplanationCancelled, match="extra forward passes"):
        explain_volume(model, volume, mask, TARGET_CLASS, methods=["seg-score-cam"], device="cpu", batch_size=2,
                       cancel=lambda: asked.append(1) is None and len(asked) > 1)


def test_all_methods_in_one_call_equal_each_method_alone_on_padded_slices(case):
    """Maps at layer resolution and FullGrad's at the input's are upsampled and cropped separately."""
    model, x, m = case
    x, m = x[:, :, :30, :29], m[:, :30, :29]  # padded to 32 x 32 by the engine
    keys = [key for key in METHODS if key != "seg-cam"]
    together = explain_slices(model, x, m, TARGET_CLASS, layers=["bottleneck"], methods=keys)
    for key in keys:
        alone = explain_slices(model, x, m, TARGET_CLASS, layers=["bottleneck"], methods=[key])[(key, "bottleneck")]
        assert together[(key, "bottleneck")].shape == (2, 30, 29)
        assert torch.allclose(together[(key, "bottleneck")], alone, atol=1e-6), key


def test_methods_that_run_the_network_again_refuse_without_it(case):
    model, x, m = case
    logits, activations = forward_with_graph(model, x, ["bottleneck"])
    with pytest.raises(ValueError, match="seg-score-cam run the network again: pass the model"):
        gradient_maps(logits, activations, m, TARGET_CLASS, [METHODS["seg-hires-grad-cam"], METHODS["seg-score-cam"]])
