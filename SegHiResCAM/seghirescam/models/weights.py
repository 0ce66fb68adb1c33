"""Weights are data: reading a state dict without running pickled code, and checking it fits a network.

Every model family reads and checks weights here, each raising its own error type so the message
names the family's file and rule.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

__all__ = ["read_state_dict", "state_dict_mismatch"]


def read_state_dict(path: Path, error: type[Exception], *, unwrap: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a weights-only ``torch.save`` file.

    Args:
        path: The weights file.
        error: The exception type to raise (the family's, a ``ValueError`` subclass).
        unwrap: Keys of a wrapping dict whose value is the state dict (e.g. ``("model",)``).

    Returns:
        Parameter name -> tensor.

    Raises:
        ``error``: Missing or unreadable file, pickled Python objects (refused: loading them could run
            arbitrary code), or anything but a dict of tensors.
    """
    if not path.is_file():
        raise error(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as reason:  # noqa: BLE001 - safetensors raises its own error types
            raise error(f"{path} is not a readable safetensors file: {reason}") from reason
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as reason:
        raise error(f"{path} holds pickled Python objects (e.g. a whole model saved with torch.save(model)); "
                    "loading it could run arbitrary code, so it is refused. Save the weights instead: "
                    "torch.save(model.state_dict(), path) or safetensors") from reason
    except Exception as reason:  # noqa: BLE001 - a truncated or foreign file
        raise error(f"{path} cannot be read as PyTorch weights: {reason}") from reason
    for key in unwrap:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise error(f"{path} does not hold a state dict of tensors")
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
