"""Perturbation CAMs: Ablation-CAM and Score-CAM, one extra forward per channel and slice, batched.

Both weigh the channels A[k] of the explained layer by what the network's y_M does when the input or
the layer is changed channel by channel; the map is ReLU(sum_k alpha_k A[k]) as for Grad-CAM. The
(slice, channel) pairs of a batch are run in chunks of several forwards at once; only slices whose
M is not empty are run (an empty M gives a zero map), and the run's cancel callback is asked
between chunks.

- Ablation-CAM (Desai & Ramaswamy 2020; pytorch-grad-cam's AblationCAM weighting):
  alpha_k = (y_M - y_M with channel k of A set to 0) / y_M. The forward restarts at the explained
  layer where the network allows it: a layer inside a chain of ``nn.Sequential`` modules, whose
  remaining modules then run on the ablated A alone. Elsewhere (the U-Net: its decoder reads the
  encoder's skip connections, which only its own ``forward`` wires up) the full forward is re-run
  with the channel zeroed by a forward hook on the layer.
- Score-CAM (Wang et al. 2020; as pytorch-grad-cam): S_k = A[k] upsampled to the input (bilinear or
  trilinear, align_corners=True) and min-max normalised to [0, 1] (+1e-8); alpha_k = y_M(x * S_k),
  the raw logit sum (``softmax=True``: pytorch-grad-cam's softmax over k).

Arrays: as ``LayerContext``: x (B, C, *S), A (B, K, *s), maps (B, *s).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seghirescam.cam.layer_context import LayerContext, target_scores

__all__ = ["ablation_cam", "score_cam", "sequential_tail", "forward_chunk", "estimate_extra_forwards",
           "log_cost_estimate"]

LOGGER = logging.getLogger(__name__)
# Pixels (or voxels) of input per chunk of extra forwards: forwards without a graph are cheap in memory.
CPU_CHUNK_PIXELS = 8 * 256 * 256
GPU_CHUNK_PIXELS = 64 * 512 * 512


def forward_chunk(x: torch.Tensor) -> int:
    """How many single-slice forwards run at once: a pixel budget per device (CPU 8 x 256^2, GPU 64 x 512^2).

    Args:
        x: The model input (B, C, *S).
    """
    budget = CPU_CHUNK_PIXELS if x.device.type == "cpu" else GPU_CHUNK_PIXELS
    return max(1, budget // math.prod(x.shape[2:]))


def sequential_tail(model: nn.Module, layer: str) -> nn.Module | None:
    """The part of the network after ``layer``, if the forward can restart there.

    Args:
        model: The network.
        layer: A submodule's name.

    Returns:
        An ``nn.Sequential`` of the modules that follow the layer, when the layer and all its parents
        are items of ``nn.Sequential`` containers (the forward is then a plain chain); None otherwise
        (e.g. a U-Net, whose forward wires skip connections).
    """
    module, rests = model, []
    for part in layer.split("."):
        if not isinstance(module, nn.Sequential) or part not in module._modules:
            return None
        children = list(module._modules.items())
        position = [name for name, _ in children].index(part)
        rests.append([child for _, child in children[position + 1:]])
        module = module._modules[part]
    return nn.Sequential(*[child for rest in reversed(rests) for child in rest])


def _logits_with_replaced_layer(model: nn.Module, layer: str, x: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
    """The full forward of x (N, C, *S) with the layer's output replaced by ``replacement`` (N, K, *s)."""
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _module, _inputs, _output: replacement)
    try:
        return model(x)
    finally:
        handle.remove()


def _pairs(context: LayerContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(slice, channel) index pairs to run: every channel of every slice whose M is not empty."""
    batch, channels = context.activations.shape[:2]
    holding = torch.nonzero(context.weights.flatten(1).ne(0).any(1).cpu())[:, 0]
    slices = holding.repeat_interleave(channels)
    return slices, torch.arange(channels).repeat(len(holding))


def _channel_scores(context: LayerContext, perturbed_logits) -> torch.Tensor:
    """Run every (slice, channel) pair in chunks; scores (B, K) float32 (NaN for slices not run)."""
    batch, channels = context.activations.shape[:2]
    scores = torch.full((batch, channels), float("nan"), device=context.x.device)
    slices, kept = _pairs(context)
    chunk, total = forward_chunk(context.x), len(slices)
    with torch.no_grad():
        for start in range(0, total, chunk):
            context.check_cancel(start, total)
            b, k = slices[start:start + chunk].to(context.x.device), kept[start:start + chunk].to(context.x.device)
            logits = perturbed_logits(b, k)
            scores[b, k] = target_scores(logits, context.weights[b], context.target_class)
    return scores


def ablation_cam(context: LayerContext) -> torch.Tensor:
    """Seg-Ablation CAM: alpha_k = (y_M - y_M with A[k] = 0) / y_M; map sum_k alpha_k A[k] (pre-ReLU).

    Slices with y_M = 0 (empty M) get a zero map.
    """
    a, model = context.activations, context.model
    tail = sequential_tail(model, context.layer)

    def ablated_logits(b: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ablated = a[b].clone()
        ablated[torch.arange(len(b), device=a.device), k] = 0
        if tail is not None:
            return tail(ablated)
        return _logits_with_replaced_layer(model, context.layer, context.x[b], ablated)

    scores = _channel_scores(context, ablated_logits)
    y = context.scores[:, None]
    alpha = torch.where(y != 0, (y - scores) / torch.where(y != 0, y, 1), torch.zeros_like(scores))
    return (alpha.nan_to_num(0.0).reshape(alpha.shape + (1,) * (a.ndim - 2)) * a).sum(dim=1)


def score_cam(context: LayerContext, softmax: bool = False) -> torch.Tensor:
    """Seg-Score CAM: alpha_k = y_M(x * S_k) (or its softmax over k); map sum_k alpha_k A[k] (pre-ReLU)."""
    a, x = context.activations, context.x
    mode = "trilinear" if a.ndim == 5 else "bilinear"

    def masked_logits(b: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        channel = a[b, k][:, None]  # (n, 1, *s)
        upsampled = F.interpolate(channel, size=x.shape[2:], mode=mode, align_corners=True)
        flat = upsampled.flatten(1)
        low = flat.amin(1).reshape((-1,) + (1,) * (upsampled.ndim - 1))
        high = flat.amax(1).reshape(low.shape)
        return context.model(x[b] * ((upsampled - low) / (high - low + 1e-8)))

    scores = _channel_scores(context, masked_logits)
    run = ~scores.isnan().any(1)
    alpha = torch.zeros_like(scores)
    alpha[run] = torch.softmax(scores[run], dim=1) if softmax else scores[run]
    return (alpha.reshape(alpha.shape + (1,) * (a.ndim - 2)) * a).sum(dim=1)


def estimate_extra_forwards(model: nn.Module, example: torch.Tensor, layers: Sequence[str], methods: Sequence,
                            n_slices: int) -> tuple[int, float]:
    """The extra forwards of the perturbation methods of a run, and a rough time for them.

    Args:
        model: The network, in eval mode, on the example's device.
        example: One prepared, padded slice (1, C, *S).
        layers: The explained layers.
        methods: The run's ``CAMMethod`` objects; those with ``cost == "perturbation"`` count.
        n_slices: Slices holding M.

    Returns:
        (forwards, seconds): one forward per channel of each layer, per slice and perturbation method;
        seconds from one timed forward of the example (batched chunks usually run faster).
    """
    perturbing = [method for method in methods if method.cost == "perturbation"]
    if not perturbing:
        return 0, 0.0
    modules = dict(model.named_modules())
    channels: dict[str, int] = {}
    handles = [modules[name].register_forward_hook(
        lambda _m, _i, output, name=name: channels.__setitem__(name, int(output.shape[1]))) for name in layers]
    try:
        with torch.no_grad():
            started = time.perf_counter()
            model(example)
            seconds = time.perf_counter() - started
    finally:
        for handle in handles:
            handle.remove()
    forwards = len(perturbing) * n_slices * sum(channels.get(name, 0) for name in layers)
    return forwards, forwards * seconds


def log_cost_estimate(model: nn.Module, example: torch.Tensor, layers: Sequence[str], methods: Sequence,
                      n_slices: int) -> tuple[int, float]:
    """``estimate_extra_forwards``, logged at INFO on this module's logger (the CLI prints it).

    Returns:
        As ``estimate_extra_forwards``.
    """
    forwards, seconds = estimate_extra_forwards(model, example, layers, methods, n_slices)
    if forwards:
        names = ", ".join(method.key for method in methods if method.cost == "perturbation")
        LOGGER.info("%s: %d extra forward passes (one per channel of %s, on %d slices holding M), "
                    "roughly %.0f s on %s", names, forwards, ", ".join(layers), n_slices, seconds, example.device)
    return forwards, seconds
