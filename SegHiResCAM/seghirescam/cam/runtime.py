"""Where, how big and in which format: device choice, the model on that device, the automatic
batch size, the CPU's channels-last copy of a model, and reduced precision (autocast)."""

from __future__ import annotations

import copy
import functools
import platform
import weakref

import psutil

import torch
from torch import nn

__all__ = ["resolve_device", "model_on_device", "auto_batch_size", "cpu_auto_batch_size", "autocast_context",
           "check_autocast", "cpu_supports_bf16", "channels_last_model", "memory_batch_size", "is_out_of_memory",
           "CPU_AUTO_BATCH_PIXELS"]

_MAX_BATCH = {"cpu": 16, "cuda": 256, "mps": 64}
# "auto" on the CPU: at most this many pixels per batch, with no probe forward. Larger CPU batches are
# slower (measured: 8.7 slices/s at batch 2 vs 7.0 at batch 8, 256 x 256, 2 cores) and each 512 x 512
# slice of the default U-Net costs about 0.3 GB while it is explained, far below the free RAM.
CPU_AUTO_BATCH_PIXELS = 2 * 256 * 256
# Bytes of activations per slice, measured once per (model, input shape, dtype, device, precision).
_PROBED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()
# Channels-last copies of CPU models, with the (storage, version) of every tensor they were copied from.
_CHANNELS_LAST: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def _tensor_state(model: nn.Module) -> tuple:
    """(storage address, version counter) of every parameter and buffer: changes when any is written."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def channels_last_model(model: nn.Module) -> nn.Module:
    """A channels-last (NHWC) copy of a CPU model, made once and reused while the model's tensors are unchanged.

    On the CPU, oneDNN's NHWC convolutions are faster than NCHW ones, and the maps they give
    equal the NCHW maps to float32 rounding (within 1e-6 of the max on the shared real CT,
    ``Testing/test_cam_runtime.py``). The caller's model is not changed; the copy is remade
    when any parameter or buffer was written since (optimizer step, ``load_state_dict``).

    Args:
        model: A 2D network on the CPU, (B, C, H, W) in.

    Returns:
        The copy, its weights in ``torch.channels_last``; the model itself if it cannot be copied.
    """
    state = _tensor_state(model)
    cached = _CHANNELS_LAST.get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    try:
        with torch.inference_mode(False), torch.no_grad():
            converted = copy.deepcopy(model).to(memory_format=torch.channels_last)
    except (RuntimeError, TypeError):  # e.g. a model holding an object deepcopy refuses: NCHW is exact too
        return model
    _CHANNELS_LAST[model] = (state, converted)
    return converted


def _available_bytes(device: torch.device) -> int:
    """Free memory of the device in bytes: CUDA's free memory, else the system's available RAM (psutil)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def _activation_bytes(model: nn.Module, example: torch.Tensor, autocast: str | None) -> int:
    """Bytes every submodule outputs for one slice: one forward of ``example`` with counting hooks."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    handles = [module.register_forward_hook(count) for module in model.modules()]
    try:
        with torch.no_grad(), autocast_context(example.device, autocast):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return total


def auto_batch_size(model: nn.Module, example: torch.Tensor, n_slices: int, *, autocast: str | None = None,
                    owner: nn.Module | None = None) -> int:
    """Pick a batch size: on the CPU from the pixel cap alone, on a GPU to fit a quarter of the free memory.

    On the CPU no forward is run: at most ``CPU_AUTO_BATCH_PIXELS`` pixels per batch. On a GPU
    one forward of ``example`` with hooks counts the bytes every submodule outputs (an
    explanation keeps about three times that per slice: activations, saved tensors,
    gradients); that count is measured once per model, input shape, dtype, device and
    precision and kept while the model lives, so later calls only read the free memory.

    Args:
        model: The network, on ``example``'s device, in eval mode.
        example: One preprocessed, padded slice (1, C, H, W) (or (1, C, D, H, W)).
        n_slices: How many slices there are to explain (the batch never exceeds it).
        autocast: The precision the explanation runs in (None: float32).
        owner: The model the measurement is remembered for (default: ``model``), e.g. the
            caller's model when ``model`` is its copy on the device.

    Returns:
        A batch size between 1 and a per-device cap (CPU 16, CUDA 256, MPS 64).
    """
    if example.device.type == "cpu":
        return cpu_auto_batch_size(example[0, 0].numel(), n_slices)
    return memory_batch_size(model, example, n_slices, autocast=autocast, owner=owner)


def cpu_auto_batch_size(pixels: int, n_slices: int) -> int:
    """The CPU's "auto" batch size: at most ``CPU_AUTO_BATCH_PIXELS`` pixels per batch, no forward run.

    Args:
        pixels: Pixels of one padded slice (H' x W'; D' x H' x W' for a volume).
        n_slices: How many slices there are to explain (the batch never exceeds it).

    Returns:
        A batch size between 1 and 16.
    """
    return int(max(1, min(CPU_AUTO_BATCH_PIXELS // max(1, int(pixels)), _MAX_BATCH["cpu"], n_slices)))


def memory_batch_size(model: nn.Module, example: torch.Tensor, n_slices: int, *, autocast: str | None = None,
                      owner: nn.Module | None = None) -> int:
    """The batch size whose activations fit a quarter of the device's free memory (``auto_batch_size`` on a GPU).

    Args, Returns: As for ``auto_batch_size``; the probe forward runs once per owner, input
    shape, dtype, device and precision.
    """
    device = example.device
    key = (tuple(example.shape[1:]), example.dtype, str(device), autocast)
    probed = _PROBED.setdefault(owner if owner is not None else model, {})
    if key not in probed:
        probed[key] = max(3 * _activation_bytes(model, example, autocast), 1)
    fits = _available_bytes(device) // 4 // probed[key]
    return int(max(1, min(fits, _MAX_BATCH.get(device.type, 16), n_slices)))


@functools.cache
def cpu_supports_bf16() -> bool:
    """True if this CPU has bfloat16 arithmetic in hardware (x86: AVX512-BF16 or AMX; Arm: the BF16 feature).

    Without it, PyTorch emulates bfloat16 on the CPU, which is slower than float32, so a
    bfloat16 preview would be slower and less accurate: it is refused (``check_autocast``).
    """
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    if machine in ("aarch64", "arm64"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as info:  # Linux on Arm lists "bf16" among the features
                return any(line.lower().startswith("features") and " bf16" in line.lower() for line in info)
        except OSError:
            return False
    return False


def check_autocast(device: torch.device, autocast: str | None) -> str | None:
    """Check a requested precision against the device, before any work.

    Args:
        device: Where the network runs.
        autocast: None or "fp32" (float32, the default), "bf16" (CUDA with bfloat16, a CPU with
            bfloat16 in hardware) or "fp16" (CUDA, MPS).

    Returns:
        None for float32, else "bf16" or "fp16".

    Raises:
        ValueError: For an unknown precision, or one this device has no hardware for; the
            message says what to use instead.
    """
    if autocast is None or autocast == "fp32":
        return None
    if autocast not in _AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, 'fp32', 'bf16' or 'fp16', got {autocast!r}")
    if autocast == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            raise ValueError("bf16 needs bfloat16 arithmetic in hardware, and this CPU has none (no AVX512-BF16 or "
                             f"AMX; PyTorch reports {torch.backends.cpu.get_cpu_capability()}): emulated it would be "
                             "slower than float32. Run in float32 (the default) or on a CUDA GPU")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"bf16 needs a GPU with bfloat16 support; {torch.cuda.get_device_name(device)} has none: "
                             "run in float32 (the default)")
    elif device.type not in ("cuda", "mps"):
        raise ValueError(f"autocast={autocast!r} is for GPUs; on {device.type} run in float32 (autocast=None) "
                         "or, on a CPU with bfloat16 in hardware, autocast='bf16'")
    return autocast


def autocast_context(device: torch.device, autocast: str | None):
    """A ``torch.autocast`` context for "bf16"/"fp16", or a disabled one for None/"fp32".

    Raises:
        ValueError: As ``check_autocast``.
    """
    autocast = check_autocast(device, autocast)
    if autocast is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[autocast])


def is_out_of_memory(error: BaseException) -> bool:
    """True for an out-of-memory error of a device (the batch can be halved and retried)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
