"""Where and how big: device choice, the model on that device, and the automatic batch size."""

from __future__ import annotations

import copy

import psutil

import torch
from torch import nn

__all__ = ["resolve_device", "model_on_device", "auto_batch_size", "autocast_context", "is_out_of_memory"]

_MAX_BATCH = {"cpu": 16, "cuda": 256, "mps": 64}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto", a device name or a ``torch.device`` into a usable ``torch.device``.

    "auto" means CUDA if available, else Apple MPS, else CPU.

    Raises:
        ValueError: If the device is unknown or not available on this machine.
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} was asked for, but MPS is not available here; use 'auto' or 'cpu'")
    return resolved


def model_on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Return the model itself if it lives on ``device`` in float32, else a float32 copy moved there.

    The caller's model is never moved or cast: that would change the caller's object. Models of
    another floating dtype (float64, float16, bfloat16) are explained as a float32 copy, since
    the engine feeds float32 slices (mixed precision is ``autocast_context``'s business).
    """
    tensors = list(model.parameters()) + list(model.buffers())
    placed = all(t.device == device or (t.device.type == device.type and device.index is None) for t in tensors)
    float32 = all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    if placed and float32:
        return model
    return copy.deepcopy(model).to(device=device, dtype=torch.float32)


def _available_bytes(device: torch.device) -> int:
    """Free memory of the device in bytes: CUDA's free memory, else the system's available RAM (psutil)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def auto_batch_size(model: nn.Module, example: torch.Tensor, n_slices: int) -> int:
    """Pick a batch size whose activations fit a quarter of the free memory.

    One forward of ``example`` (1, C, H, W) with hooks counts the bytes every submodule
    outputs; an explanation keeps about three times that per slice (activations, saved
    tensors, gradients).

    Args:
        model: The network, on ``example``'s device, in eval mode.
        example: One preprocessed, padded slice (1, C, H, W).
        n_slices: How many slices there are to explain (the batch never exceeds it).

    Returns:
        A batch size between 1 and a per-device cap (CPU 16, CUDA 256, MPS 64).
    """
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    handles = [module.register_forward_hook(count) for module in model.modules()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    per_slice = max(3 * total, 1)
    fits = _available_bytes(example.device) // 4 // per_slice
    return int(max(1, min(fits, _MAX_BATCH.get(example.device.type, 16), n_slices)))


def autocast_context(device: torch.device, autocast: str | None):
    """A ``torch.autocast`` context for "bf16"/"fp16" on GPU, or a no-op for None.

    Raises:
        ValueError: For an unknown precision, or autocast asked for on the CPU.
    """
    if autocast is None:
        return torch.autocast(device.type, enabled=False)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if autocast not in dtypes:
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
    if device.type not in ("cuda", "mps"):
        raise ValueError(f"autocast={autocast!r} is for GPUs; on {device.type} run in float32 (autocast=None)")
    return torch.autocast(device.type, dtype=dtypes[autocast])


def is_out_of_memory(error: BaseException) -> bool:
    """True for an out-of-memory error of a device (the batch can be halved and retried)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()

