"""The CAM engine: one forward and one backward per batch give every method at every layer.

Array orders crossing this boundary:
- ``explain_slices``: x (B, C, H, W) tensor, m (B, H, W) bool tensor -> maps (B, H, W).
- ``explain_volume``: volume and mask of any 3D shape; slices are taken along ``axis``;
  maps come back in the volume's own shape and order.

On the CPU the network runs on a channels-last copy of the model (exact to float32 rounding, faster);
the engine leaves ``torch.inference_mode`` for its own work, so it can be called inside it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seghirescam.cam.capture import ActivationCapture, evaluation_mode, resolve_layers
from seghirescam.cam.method_info import DEFAULT_METHOD_KEYS
from seghirescam.cam.layer_context import LayerContext, target_scores
from seghirescam.cam.methods import CAMMethod, resolve_methods
from seghirescam.cam.perturbation import log_cost_estimate
from seghirescam.cam.layers import default_layers, explainable_layers
from seghirescam.cam.normalization import check_normalize, normalize_maps
from seghirescam.cam.padding import pad_slices, padded_size, size_multiple
from seghirescam.cam.result import ExplanationCancelled, ExplanationResult
from seghirescam.cam.runtime import (CPU_AUTO_BATCH_PIXELS, auto_batch_size, autocast_context, channels_last_model,
                                     check_autocast, cpu_auto_batch_size, is_out_of_memory, model_on_device,
                                     resolve_device)
from seghirescam.cam.validation import check_target_class, check_volume_inputs
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION

__all__ = ["explain_slices", "explain_volume", "DEFAULT_METHODS", "CPU_AUTO_BATCH_PIXELS"]

DEFAULT_METHODS = DEFAULT_METHOD_KEYS  # kept in the registry's torch-free metadata, which the GUI reads too
MapKey = tuple[str, str]
Preprocess = Callable[[torch.Tensor], torch.Tensor]


def forward_with_graph(model: nn.Module, x: torch.Tensor, layers: Sequence[str],
                       autocast: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward that keeps the autograd graph from the earliest explained layer to the logits.

    The forward runs without a graph until the earliest explained layer (``ActivationCapture``), so a
    backward through the returned logits stops there and computes no parameter gradient.

    Args:
        model: In eval mode, on x's device; maps (B, C, *S) to logits (B, classes, *S), S 2D or 3D.
        x: Model input (B, C, *S), already padded to the model's size multiple.
        layers: Names of the explained layers.
        autocast: None, "bf16" or "fp16" (GPU only).

    Returns:
        (logits (B, classes, *S), {layer: activation (B, K, *s)} in the order of ``layers``).

    Raises:
        ValueError: If the logits do not have the input's batch and spatial shape, or a layer cannot be
            captured (``ActivationCapture``).
    """
    with ActivationCapture(model, layers) as capture:
        with torch.no_grad(), autocast_context(x.device, autocast):
            logits = model(x)
        activations = capture.checked_activations()
    if not isinstance(logits, torch.Tensor) or logits.ndim != x.ndim or logits.shape[0] != x.shape[0] \
            or logits.shape[2:] != x.shape[2:]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must map (B, C, *S) to logits (B, classes, *S); got {shape} "
                         f"for input {tuple(x.shape)}")
    return logits, activations


def gradient_maps(logits: torch.Tensor, activations: dict[str, torch.Tensor], weights: torch.Tensor,
                  target_class: int, methods: Sequence[CAMMethod], *, model: nn.Module | None = None,
                  x: torch.Tensor | None = None, cancel: Callable[[], bool] | None = None,
                  retain_graph: bool = False) -> tuple[dict[MapKey, torch.Tensor], float]:
    """Pre-ReLU maps for y = sum over voxels of weights x class-c logits: one backward through a kept graph.

    Args:
        logits, activations: From ``forward_with_graph``.
        weights: (B, *S) float or bool: each logit's weight in y.
        target_class: Class c.
        methods: What to explain; each computes its map from a ``LayerContext`` (gradient methods
            combine (A, G); methods with a ``model_pass`` also need ``model`` and ``x``).
        model, x: The network and its input (B, C, *S), for methods that run the network again.
        cancel: The run's cancel callback, for long methods.
        retain_graph: Keep the graph for further backwards (one per click, ``cam.interactive``).

    Returns:
        ({(method, layer): (B, *s) float32 pre-ReLU maps}, y as a float).

    Raises:
        ValueError: If c is out of range, or a method that runs the network again gets no model.
    """
    check_target_class(target_class, logits.shape[1])
    needing = [method.key for method in methods if method.model_pass is not None]
    if needing and (model is None or x is None):
        raise ValueError(f"{', '.join(needing)} run the network again: pass the model and its input")
    with torch.enable_grad():
        scores = target_scores(logits, weights, target_class)
        score = scores.sum()
        gradients = torch.autograd.grad(score, list(activations.values()), allow_unused=True,
                                        retain_graph=retain_graph)
    maps: dict[MapKey, torch.Tensor] = {}
    for (layer, a), g in zip(activations.items(), gradients):
        a = a.detach().float()
        g = torch.zeros_like(a) if g is None else g.float()
        context = LayerContext(model, x, weights, target_class, layer, a, g, scores.detach(), cancel)
        for method in methods:
            maps[(method.name, layer)] = method.compute(context)
    return maps, float(score.detach().double())


def layer_maps(model: nn.Module, x: torch.Tensor, weights: torch.Tensor, target_class: int, layers: Sequence[str],
               methods: Sequence[CAMMethod], autocast: str | None = None,
               cancel: Callable[[], bool] | None = None) -> tuple[dict[MapKey, torch.Tensor], float]:
    """Pre-ReLU maps at layer resolution for y = sum over voxels of weights x class-c logits: one forward, one backward.

    The engine's core, shared by slice batches (weights = M) and sliding-window tiles (weights = M's
    share of each tile in the stitched prediction, ``cam.tiles``): ``forward_with_graph`` then
    ``gradient_maps``. Methods with a ``model_pass`` (Ablation, Score, FullGrad, LIFT, CAM) then get A, G
    and y per slice in a ``LayerContext`` and run their own extra passes (float32).

    Args:
        model: In eval mode, on x's device; maps (B, C, *S) to logits (B, classes, *S), S 2D or 3D.
        x: Model input (B, C, *S), already padded to the model's size multiple.
        weights: (B, *S) float or bool: each logit's weight in y.
        target_class: Class c.
        layers, methods: What to explain.
        autocast: None/"fp32", "bf16" (CUDA, or a CPU with bfloat16 in hardware) or "fp16" (GPU only):
            the forward runs under ``torch.autocast``; the maps are computed in float32 from its results.
        cancel: Asked between the extra passes of methods that run the network again.

    Returns:
        ({(method, layer): (B, *s) float32 pre-ReLU maps (FullGrad: (B, *S))}, y as a float).

    Raises:
        ValueError: If the logits do not have the input's batch and spatial shape, or c is out of range,
            or the precision is unknown or not supported by the device.
    """
    with torch.inference_mode(False):  # called inside torch.inference_mode(): its own work runs outside it
        x, weights = autograd_tensor(x), autograd_tensor(weights)
        logits, activations = forward_with_graph(model, x, layers, autocast)
        return gradient_maps(logits, activations, weights, target_class, methods, model=model, x=x, cancel=cancel)


def autograd_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor, or a normal copy of an inference tensor (made in ``torch.inference_mode``), which autograd
    could not save for the backward.

    Args:
        tensor: Any tensor.

    Returns:
        The tensor itself, or its clone made outside inference mode.
    """
    return tensor.clone() if tensor.is_inference() else tensor


def upsample_maps(maps: dict[MapKey, torch.Tensor], padded_size: tuple[int, int],
                  height: int, width: int) -> dict[MapKey, torch.Tensor]:
    """ReLU, bilinear upsampling to the padded input's size, and the crop back to (H, W), for every map.

    Args:
        maps: ``{(method, layer): (B, h, w)}`` pre-ReLU maps at each layer's resolution.
        padded_size: (H', W') of the padded model input.
        height, width: The slices' own (H, W).

    Returns:
        ``{(method, layer): (B, H, W)}``; one interpolation per layer and resolution (its maps stacked;
        FullGrad's maps are at the input's resolution).
    """
    upsampled: dict[MapKey, torch.Tensor] = {}
    for layer, shape in dict.fromkeys((layer, tuple(value.shape)) for (_, layer), value in maps.items()):
        keys = [key for key, value in maps.items() if key[1] == layer and tuple(value.shape) == shape]
        stacked = torch.stack([maps[key] for key in keys], dim=1)  # (B, n_methods, h, w)
        stacked = F.interpolate(stacked.clamp_min(0), size=tuple(padded_size), mode="bilinear", align_corners=False)
        upsampled.update({key: stacked[:, index, :height, :width] for index, key in enumerate(keys)})
    return upsampled


def _explain_batch(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int, layers: Sequence[str],
                   methods: Sequence[CAMMethod], multiple: int, raw: bool, autocast: str | None,
                   cancel: Callable[[], bool] | None = None) -> dict[MapKey, torch.Tensor]:
    """Maps for one prepared batch of slices; the model is in eval mode on x's device."""
    height, width = x.shape[-2:]
    xp, mp = pad_slices(x, multiple, m)
    if _is_channels_last(model):
        xp = xp.contiguous(memory_format=torch.channels_last)
    maps, _score = layer_maps(model, xp, mp, target_class, layers, methods, autocast, cancel)
    if raw:
        return maps
    return upsample_maps(maps, tuple(xp.shape[-2:]), height, width)


def _is_channels_last(model: nn.Module) -> bool:
    """Whether the model's first 4D parameter is stored channels-last (the input is then given so too)."""
    weight = next((p for p in model.parameters() if p.ndim == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@contextmanager
def _fast_model(model: nn.Module, device: torch.device, channels_last: bool | None,
                methods: Sequence[CAMMethod]) -> Iterator[nn.Module]:
    """The model to run, in eval mode for the block: with ``channels_last`` (None: on the CPU, for gradient
    methods only) its channels-last copy (``runtime.channels_last_model``), else the model itself.

    Methods with their own passes (``model_pass``: Ablation, Score, ...) divide by small differences of
    scores, where the rounding differences of the NHWC kernels are not negligible: they run NCHW by default.

    The caller's model is put in eval mode too (with ``evaluation_mode``'s warning if it was training) and
    its flags are restored on exit.
    """
    with evaluation_mode(model):
        if channels_last is None:
            channels_last = device.type == "cpu" and all(getattr(m, "model_pass", None) is None for m in methods)
        if not channels_last:
            yield model
            return
        fast = channels_last_model(model)
        with evaluation_mode(fast):
            yield fast


def _methods(methods: Sequence[str | CAMMethod] | str | CAMMethod) -> list[CAMMethod]:
    """The registry's methods for names and/or ``CAMMethod`` objects (a single one is accepted too)."""
    return resolve_methods((methods,) if isinstance(methods, (str, CAMMethod)) else methods)


def explain_slices(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int, *,
                   layers: Sequence[str] | None = None, methods: Sequence[str | CAMMethod] = DEFAULT_METHODS,
                   raw: bool = False, autocast: str | None = None,
                   pad_to_multiple: int | None = None, channels_last: bool | None = None) -> dict[MapKey, torch.Tensor]:
    """Explain a batch of 2D slices.

    Args:
        model: Maps (B, C, H, W) to logits (B, classes, H, W); it must live on x's device.
            A model in training mode is explained in eval mode (with a warning) and restored.
        x: Input batch (B, C, H, W), already preprocessed.
        m: Pixel sets M (B, H, W), bool; an empty M gives a zero map.
        target_class: Class c whose logits are summed over M.
        layers: Names from ``model.named_modules()``; None: ``default_layers(explainable_layers(model))``
            ("bottleneck" if the model has it).
        methods: Names from ``seghirescam.cam.methods.METHODS`` or ``CAMMethod`` objects.
        raw: If True, return maps at layer resolution (of the padded input) before ReLU and
            upsampling, e.g. to check HiResCAM's exactness.
        autocast: None/"fp32" (default), "bf16" (CUDA, or a CPU with bfloat16 in hardware; an approximate
            preview) or "fp16" (GPU only).
        pad_to_multiple: Pad H, W to this multiple (default: ``model.size_multiple`` or 1).
        channels_last: Run the network channels-last (NHWC); None: on the CPU for gradient methods, where it
            is faster and equal to NCHW to float32 rounding (methods with their own passes run NCHW).

    Returns:
        ``{(method, layer): maps}``, maps (B, H, W) float32 on x's device (raw: (B, h, w)).

    Raises:
        ValueError: For wrong shapes, an unknown layer or method, a class out of range, a precision the
            device has no hardware for.
        TypeError: If m is not boolean.
    """
    with torch.inference_mode(False):
        return _explain_slices(model, x, m, target_class, layers, methods, raw, autocast, pad_to_multiple,
                               channels_last)


def _explain_slices(model: nn.Module, x: torch.Tensor, m: torch.Tensor, target_class: int,
                    layers: Sequence[str] | None, methods: Sequence[str | CAMMethod], raw: bool, autocast: str | None,
                    pad_to_multiple: int | None, channels_last: bool | None) -> dict[MapKey, torch.Tensor]:
    """``explain_slices`` outside inference mode."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
        raise TypeError(f"m must be a bool tensor (B, H, W), got {getattr(m, 'dtype', type(m).__name__)}")
    if m.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"m must have shape (B, H, W) = {(x.shape[0], *x.shape[2:])}, got {tuple(m.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x holds NaN or Inf values")
    check_target_class(target_class, getattr(model, "num_classes", None))
    autocast = check_autocast(x.device, autocast)
    multiple = size_multiple(model, pad_to_multiple)
    layers = default_layers(explainable_layers(model)) if layers is None else layers
    method_list = _methods(methods)
    with _fast_model(model, x.device, channels_last, method_list) as fast:
        return _explain_batch(fast, x, m.to(x.device), target_class, layers, method_list, multiple, raw, autocast)


def _default_preprocess(slices: torch.Tensor) -> torch.Tensor:
    return slices[:, None]


def _normalize_band(stack: np.ndarray, todo: np.ndarray, mode: str) -> np.ndarray:
    """``normalize_maps`` on the band of slices from the first to the last explained one.

    Slices outside it are all zero, so the result is the same; their memory pages stay
    untouched (``np.zeros`` pages cost no RAM until written), which keeps a volume's maps small
    when M spans part of it.
    """
    lo, hi = int(todo[0]), int(todo[-1]) + 1
    band = normalize_maps(stack[lo:hi], mode)
    scales = np.full(stack.shape[0], band[0] if mode == "volume" else 1.0)
    scales[lo:hi] = band
    return scales


def _relative_to_peaks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps (B, H, W) each divided by its own max (where > 0), and those maxima (B,) float64."""
    peaks = values.reshape(len(values), -1).max(axis=1).astype(np.float64)
    return values / np.where(peaks > 0, peaks, 1.0).astype(values.dtype)[:, None, None], peaks


def _rescale_from_peaks(stack: np.ndarray, peaks: np.ndarray, todo: np.ndarray, mode: str) -> np.ndarray:
    """Finish maps stored relative to their slice peaks (narrow dtypes such as float16) for ``mode``.

    Returns:
        The scales, as ``normalize_maps`` gives them.
    """
    scales = np.ones(stack.shape[0])
    if mode == "slice":
        scales[peaks > 0] = peaks[peaks > 0]
        return scales
    top = peaks.max()
    factors = peaks / top if mode == "volume" and top > 0 else peaks  # "none": back to raw values
    for index in todo:
        if peaks[index] > 0 and factors[index] != 1.0:
            stack[index] = (stack[index].astype(np.float32) * np.float32(factors[index])).astype(stack.dtype)
    if mode == "volume" and top > 0:
        scales[:] = top
    return scales


def explain_volume(model: nn.Module, volume: np.ndarray, mask: np.ndarray, target_class: int, *,
                   layers: Sequence[str] | None = None, methods: Sequence[str | CAMMethod] = DEFAULT_METHODS,
                   axis: int = 0, batch_size: int | str = "auto", device: str | torch.device = "auto",
                   normalize: str = DEFAULT_NORMALIZATION, preprocess: Preprocess | None = None,
                   progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                   autocast: str | None = None, pad_to_multiple: int | None = None,
                   map_dtype: np.dtype | type = np.float32, channels_last: bool | None = None) -> ExplanationResult:
    """Explain a whole volume slice by slice, in batches.

    Args:
        model: Maps (B, C, H, W) to logits (B, classes, H, W). Left as found: a model on
            another device is copied, not moved; training mode is restored (see
            ``explain_slices``).
        volume: 3D array; slices are ``np.take(volume, s, axis)``. Any numeric dtype, any strides: a
            reoriented view (``SliceOrientation.to_slices``) is read as it is, without a copy.
        mask: Bool array of the volume's shape: the pixel set M of each slice. Slices with
            an empty M are not run; their maps are 0 and they are counted as skipped.
        target_class: Class c.
        layers: Names from ``model.named_modules()``; None: ``default_layers(explainable_layers(model))``
            ("bottleneck" if the model has it).
        methods: Method names or ``CAMMethod`` objects.
        axis: The slicing axis of ``volume`` (0, 1, 2 or negative).
        batch_size: Slices per batch, or "auto": on the CPU at most ``CPU_AUTO_BATCH_PIXELS`` pixels per
            batch; on a GPU what fits a quarter of its free memory (one probe forward per model and slice
            size, remembered); 1 with a perturbation method, whose own forwards are batched over channels.
            On CUDA out-of-memory the batch is halved and retried, with a warning.
        device: "auto" (CUDA, else MPS, else CPU), "cpu", "cuda", "cuda:N", "mps".
        normalize: "volume" (divide each map by its volume max), "slice" (each slice by its
            own max) or "none". Division happens only where the max is > 0.
        preprocess: Turns a batch of raw slices (B, H, W) float32 tensor on the device into
            model input (B, C, H, W); per slice, no statistics across slices. Default: adds
            the channel axis.
        progress: Called as progress(done, total) after each batch (slices explained so far).
        cancel: Called before each batch; returning True raises ``ExplanationCancelled``.
        autocast: None/"fp32" (default), "bf16" (CUDA, or a CPU with bfloat16 in hardware; an approximate
            preview, refused elsewhere) or "fp16" (GPU only).
        pad_to_multiple: Pad slices to this multiple (default: ``model.size_multiple`` or 1).
        map_dtype: dtype of the returned maps (float32, or float16 to halve memory). float16 maps
            are kept relative to each slice's peak while explaining, so small CAM values do not
            underflow; with ``normalize="none"`` the raw values must fit float16.
        channels_last: As for ``explain_slices`` (None: channels-last on the CPU).

    Returns:
        An ``ExplanationResult``; ``result[(method, layer)]`` is an array of the volume's shape.

    Raises:
        ValueError, TypeError: For bad input, with a message naming the problem.
        ExplanationCancelled: If ``cancel()`` returned True.
    """
    with torch.inference_mode(False):
        return _explain_volume(model, volume, mask, target_class, layers=layers, methods=methods, axis=axis,
                               batch_size=batch_size, device=device, normalize=normalize, preprocess=preprocess,
                               progress=progress, cancel=cancel, autocast=autocast, pad_to_multiple=pad_to_multiple,
                               map_dtype=map_dtype, channels_last=channels_last)


def _explain_volume(model: nn.Module, volume: np.ndarray, mask: np.ndarray, target_class: int, *,
                    layers: Sequence[str] | None, methods: Sequence[str | CAMMethod], axis: int,
                    batch_size: int | str, device: str | torch.device, normalize: str, preprocess: Preprocess | None,
                    progress: Callable[[int, int], None] | None, cancel: Callable[[], bool] | None,
                    autocast: str | None, pad_to_multiple: int | None, map_dtype: np.dtype | type,
                    channels_last: bool | None) -> ExplanationResult:
    """``explain_volume`` outside inference mode."""
    started = time.perf_counter()
    volume, mask, axis = check_volume_inputs(volume, mask, axis)
    method_list = _methods(methods)
    check_normalize(normalize)
    layers = default_layers(explainable_layers(model)) if layers is None else layers
    resolve_layers(model, layers)  # fail on a bad name before any work
    check_target_class(target_class, getattr(model, "num_classes", None))
    todo = np.flatnonzero(np.moveaxis(mask, axis, 0).any(axis=(1, 2)))
    if todo.size == 0:
        raise ValueError("the pixel set M is empty on every slice: nothing to explain")
    torch_device = resolve_device(device)
    autocast = check_autocast(torch_device, autocast)
    work_model = model_on_device(model, torch_device)
    preprocess = preprocess or _default_preprocess
    multiple = size_multiple(work_model, pad_to_multiple)
    slices, masks = np.moveaxis(volume, axis, 0), np.moveaxis(mask, axis, 0)
    maps = {(m.name, layer): np.zeros(volume.shape, dtype=map_dtype) for m in method_list for layer in layers}
    views = {key: np.moveaxis(array, axis, 0) for key, array in maps.items()}
    narrow = np.dtype(map_dtype).itemsize < 4  # float16: slices kept relative to their peaks (no underflow)
    peaks = {key: np.zeros(slices.shape[0]) for key in maps}

    def prepared(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        raw_slices = torch.from_numpy(np.ascontiguousarray(slices[indices], dtype=np.float32)).to(torch_device)
        x = preprocess(raw_slices)
        return x, torch.from_numpy(masks[indices]).to(torch_device)

    with _fast_model(work_model, torch_device, channels_last, method_list) as work_model:
        auto = batch_size == "auto"
        if auto and torch_device.type == "cpu":  # the pixel cap alone: no slice needs preparing
            batch_size = cpu_auto_batch_size(int(np.prod(padded_size(*slices.shape[1:], multiple))), len(todo))
        elif auto:
            example = pad_slices(prepared(todo[:1])[0], multiple)[0]
            batch_size = auto_batch_size(work_model, example, len(todo), autocast=autocast, owner=model)
        elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
        if any(method.cost == "perturbation" for method in method_list):  # printed by the CLI before they start
            log_cost_estimate(work_model, pad_slices(prepared(todo[:1])[0], multiple)[0], layers, method_list, len(todo))
            if auto:  # their forwards are batched over channels; one slice per step keeps progress fine-grained
                batch_size = 1
        done = 0
        while done < len(todo):
            if cancel is not None and cancel():
                raise ExplanationCancelled(f"cancelled after {done} of {len(todo)} slices")
            indices = todo[done:done + batch_size]
            try:
                x, m = prepared(indices)
                batch_maps = _explain_batch(work_model, x, m, target_class, layers, method_list, multiple, False, autocast,
                                            cancel)
            except RuntimeError as error:
                if not is_out_of_memory(error) or batch_size == 1:
                    raise
                batch_size //= 2
                warnings.warn(f"out of memory on {torch_device}; retrying with batch_size={batch_size}", RuntimeWarning,
                              stacklevel=2)
                if torch_device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            for key, batch in batch_maps.items():
                values = batch.cpu().numpy()
                if narrow:
                    values, peaks[key][indices] = _relative_to_peaks(values)
                views[key][indices] = values
            done += len(indices)
            if progress is not None:
                progress(done, len(todo))
    scales = {key: _rescale_from_peaks(views[key], peaks[key], todo, normalize) if narrow
              else _normalize_band(views[key], todo, normalize) for key in maps}
    return ExplanationResult(maps=maps, scales=scales, slices_explained=tuple(int(i) for i in todo),
                             slices_skipped=int(slices.shape[0] - todo.size), axis=axis, target_class=int(target_class),
                             normalize=normalize, device=str(torch_device), batch_size=int(batch_size),
                             seconds=time.perf_counter() - started)
