"""Weights are data: reading a state dict without running pickled code, and checking it fits a network.

Every model family reads and checks weights here, each raising its own error type so the message
names the family's file and rule.
"""

from __future__ import annotations

import json
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["read_state_dict", "state_dict_mismatch", "sniff_model_file", "describe_format", "PICKLE_REFUSAL"]

PICKLE_REFUSAL = ("loading it could run arbitrary code, so it is refused. Save the weights instead: "
                  "torch.save(model.state_dict(), path), or export TorchScript or safetensors")

_FORMATS = {"safetensors": "a safetensors file",
            "safetensors-damaged": "a truncated or damaged safetensors file (its header or data is cut or broken)",
            "torchscript": "a TorchScript archive", "torch-zip": "a torch.save archive",
            "zip-damaged": "a damaged or truncated zip archive (torch.save or TorchScript)",
            "zip-other": "a zip archive that is neither TorchScript nor a torch.save file",
            "pickle": "a Python pickle (legacy torch.save)", "empty": "an empty file (0 bytes)",
            "unknown": "no model format SegHiResCAM knows"}
_EXTENSIONS = {"safetensors": (".safetensors",), "safetensors-damaged": (".safetensors",),
               "torchscript": (".ts", ".torchscript", ".pt", ".pth", ".jit"),
               "torch-zip": (".pt", ".pth", ".bin", ".ckpt"), "zip-damaged": (".pt", ".pth", ".ts", ".torchscript"),
               "pickle": (".pt", ".pth", ".bin", ".ckpt", ".pkl")}


def sniff_model_file(path: Path) -> str:
    """What a model file holds, decided from its bytes (never from its name).

    Args:
        path: An existing file.

    Returns:
        "safetensors" (an 8-byte header length, then that much JSON), "safetensors-damaged" (the start
        of one, but its header or data is cut or broken), "torchscript" (a zip with TorchScript code),
        "torch-zip" (a ``torch.save`` zip), "zip-damaged", "zip-other" (any other zip), "pickle" (a legacy ``torch.save`` or any
        pickle), "empty" or "unknown".
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
        if size == 0:
            return "empty"
        if head[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(handle) as archive:
                    names = archive.namelist()
            except (zipfile.BadZipFile, OSError, EOFError):
                return "zip-damaged"
            if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
                return "torchscript"
            return "torch-zip" if any(name.endswith("data.pkl") for name in names) else "zip-other"
        if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2-5
            return "pickle"
        if len(head) >= 9 and head[8:9] == b"{":
            (length,) = struct.unpack("<Q", head[:8])
            if length > size - 8:
                return "safetensors-damaged"
            handle.seek(8)
            try:
                header = json.loads(handle.read(length))
                ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                return "safetensors-damaged"
            return "safetensors" if 8 + length + max(ends, default=0) <= size else "safetensors-damaged"
    return "unknown"


def describe_format(path: Path, kind: str) -> str:
    """e.g. "a Python pickle (legacy torch.save), though named .safetensors" for messages."""
    text = _FORMATS[kind]
    suffix = path.suffix.lower()
    if kind in _EXTENSIONS and suffix and suffix not in _EXTENSIONS[kind]:
        text += f", though named {suffix}"
    return text


def read_state_dict(path: Path, error: type[Exception], *, unwrap: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only ``torch.save`` file, whatever its name says.

    The format is sniffed from the bytes (``sniff_model_file``); nothing is unpickled beyond
    tensors and plain containers (``torch.load(weights_only=True)``).

    Args:
        path: The weights file.
        error: The exception type to raise (the family's, a ``ValueError`` subclass).
        unwrap: Keys of a wrapping dict whose value is the state dict (e.g. ``("model",)``).

    Returns:
        Parameter name -> tensor.

    Raises:
        ``error``: One message naming the file and the cause: missing, empty, damaged or truncated,
            of no known format, TorchScript (not a state dict), pickled Python objects (refused:
            loading them could run arbitrary code), or anything but a dict of tensors.
    """
    if not path.is_file():
        raise error(f"weights file not found: {path}")
    kind = sniff_model_file(path)
    what = describe_format(path, kind)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as reason:  # noqa: BLE001 - safetensors raises its own error types
            raise error(f"{path} is not a readable safetensors file: {reason}") from reason
    if kind not in ("torch-zip", "pickle"):
        hint = ("; export its state dict (torch.save(model.state_dict(), path)) or give it as the model file"
                if kind == "torchscript" else "")
        raise error(f"{path} cannot be read as weights: it is {what}{hint}")
    try:
        with path.open("rb") as handle, warnings.catch_warnings():  # a handle: torch.load picks a reader by name
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4": refused below anyway
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as reason:
        raise error(f"{path} holds pickled Python objects, e.g. a whole model saved with torch.save(model) (the "
                    f"file is {what}); {PICKLE_REFUSAL}") from reason
    except Exception as reason:  # noqa: BLE001 - a truncated or foreign file
        raise error(f"{path} cannot be read as PyTorch weights ({what}): {reason}") from reason
    for key in unwrap:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise error(f"{path} does not hold a state dict of tensors (it holds a {type(state).__name__})")
    return state


def state_dict_mismatch(network: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into ``network``, or None when it fits exactly.

    Returns:
        e.g. "missing ['a.weight'], unexpected [], wrong shapes ['b.weight: (3, 4) vs (3, 5)']" (three of each).
    """
    expected = network.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or wrong):
        return None
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3]]
    return f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}, wrong shapes {shapes}"
