"""MONAI's sliding window as tiles: the same padding, windows and importance map as its inferers.

``monai.inferers.sliding_window_inference`` pads an image smaller than the window, cuts windows
with ``dense_patch_slices`` at ``int(roi * (1 - overlap))`` steps, weights each window's logits by
``compute_importance_map`` (constant or Gaussian, clamped to its smallest positive value) and
divides by the summed weights. ``window_tiles`` gives exactly those windows and that map, so
``cam.tiles.explain_tiles`` explains the logits MONAI stitches, and ``stitched_logits`` stitches
them the same way (tested against MONAI's own inferer). A ``SliceInferer`` (a 2D network over a
3D image) is a 3D window of size 1 on its ``spatial_dim``; its tiles hold an integer index there.

Arrays: the network frame is MONAI's channel-first (C, *S) with S the 3 spatial axes after the
bundle's preprocessing; tiles are slicers into it, ``tile[1:]`` the spatial part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Window", "window_from_inferer", "pad_to_window", "window_tiles", "stitched_logits"]

Tile = tuple[Union[slice, int], ...]


@dataclass(frozen=True)
class Window:
    """A MONAI sliding window's settings.

    Attributes:
        roi_size: The network's input size (2 entries for a 2D network, else 3); non-positive
            entries mean "the whole image along that axis", as in MONAI.
        overlap: Overlap fraction per spatial axis of the 3D frame.
        mode: "constant" or "gaussian".
        sigma_scale: The Gaussian's sigma as a fraction of the window size.
        padding_mode, cval: How an image smaller than the window is padded (``F.pad``).
        slice_axis: For a 2D network on a 3D image (``SliceInferer``): the spatial axis of the
            frame slices are taken along; None for a volumetric window.
        weight_map: The inferer's cached ``roi_weight_map``, if it has one.
    """

    roi_size: tuple[int, ...]
    overlap: tuple[float, float, float] = (0.25, 0.25, 0.25)
    mode: str = "constant"
    sigma_scale: float | tuple[float, ...] = 0.125
    padding_mode: str = "constant"
    cval: float = 0.0
    slice_axis: int | None = None
    weight_map: torch.Tensor | None = None

    def roi_3d(self, image_size: Sequence[int]) -> tuple[int, int, int]:
        """The window in the 3D frame (size 1 on the slice axis), non-positive entries filled from the image."""
        roi = list(self.roi_size)
        if self.slice_axis is not None:
            roi.insert(self.slice_axis, 1)
        return tuple(int(image_size[a]) if roi[a] is None or roi[a] <= 0 else int(roi[a]) for a in range(3))


def window_from_inferer(inferer: object, network_dims: int) -> Window:
    """The window of a MONAI inferer object.

    Args:
        inferer: A ``SlidingWindowInferer``, ``SliceInferer`` or ``SimpleInferer``.
        network_dims: 2 or 3, the network's spatial dimension.

    Returns:
        Its settings.

    Raises:
        ValueError: For another inferer, or one that does not fit the network's dimension (a 2D
            network on a 3D CT needs a ``SliceInferer``).
    """
    from monai.inferers import SimpleInferer, SliceInferer, SlidingWindowInferer

    if isinstance(inferer, SimpleInferer):
        if network_dims != 3:
            raise ValueError("a SimpleInferer runs the network on the whole 3D image: it needs a 3D network; "
                             "a 2D network on a CT needs a SliceInferer")
        return Window(roi_size=(-1, -1, -1), overlap=(0.0, 0.0, 0.0))
    if not isinstance(inferer, SlidingWindowInferer):
        raise ValueError(f"inferer {type(inferer).__name__} is not supported; use SlidingWindowInferer, "
                         "SliceInferer or SimpleInferer")
    slice_axis = int(inferer.spatial_dim) if isinstance(inferer, SliceInferer) else None
    roi = tuple(inferer.orig_roi_size if slice_axis is not None else _as_tuple(inferer.roi_size, network_dims))
    if len(roi) != network_dims or (slice_axis is None) != (network_dims == 3) or slice_axis not in (None, 0, 1, 2):
        raise ValueError(f"{type(inferer).__name__} with roi_size {roi} does not fit a {network_dims}D network on a "
                         "3D CT (3D networks: SlidingWindowInferer with a 3D roi_size; 2D networks: SliceInferer with "
                         "a 2D roi_size and spatial_dim 0, 1 or 2)")
    if getattr(inferer, "buffer_steps", None) or getattr(inferer, "with_coord", False):
        raise ValueError("SlidingWindowInferer with buffer_steps or with_coord is not supported")
    weight_map = inferer.roi_weight_map if slice_axis is None else None
    return Window(roi_size=tuple(int(r) if r is not None else -1 for r in roi),
                  overlap=tuple(float(o) for o in _as_tuple(inferer.overlap, 3)), mode=str(inferer.mode.value
                  if hasattr(inferer.mode, "value") else inferer.mode), sigma_scale=inferer.sigma_scale,
                  padding_mode=str(getattr(inferer.padding_mode, "value", inferer.padding_mode)),
                  cval=float(inferer.cval), slice_axis=slice_axis, weight_map=weight_map)


def _as_tuple(value: object, length: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * length


def pad_to_window(data: torch.Tensor, window: Window) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad (C, *S) data to at least the window, as ``sliding_window_inference`` pads its input.

    Args:
        data: (C, s0, s1, s2) float tensor.
        window: The window.

    Returns:
        (padded (C, *S') tensor, spatial slicer of S' that gives back S).
    """
    shape = tuple(data.shape[1:])
    roi = window.roi_3d(shape)
    pad: list[int] = []
    for axis in reversed(range(3)):  # F.pad lists the last axis first, as MONAI builds it
        diff = max(roi[axis] - shape[axis], 0)
        pad.extend([diff // 2, diff - diff // 2])
    revert = tuple(slice(pad[2 * (2 - a)], pad[2 * (2 - a)] + shape[a]) for a in range(3))
    if not any(pad):
        return data, revert
    mode = window.padding_mode
    padded = F.pad(data[None], pad=pad, mode=mode, value=window.cval if mode == "constant" else None)[0]
    return padded, revert


def _scan_interval(image_size: Sequence[int], roi: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    """``monai.inferers.utils._get_scan_interval``: int(roi * (1 - overlap)), the whole axis if roi covers it, >= 1."""
    steps = []
    for size, r, o in zip(image_size, roi, overlap):
        steps.append(int(r) if r == size else max(int(r * (1 - o)), 1))
    return tuple(steps)


def window_tiles(window: Window, image_size: Sequence[int]) -> tuple[list[Tile], torch.Tensor]:
    """The windows and importance map MONAI's inferer uses on a padded (C, *S) image.

    Args:
        window: The window.
        image_size: The padded spatial shape S (3 entries).

    Returns:
        (tiles: slicers ``(slice(None), a0, a1, a2)`` into the (C, *S) data in MONAI's order, an int
        on the slice axis for 2D networks; importance (*patch) float32 on the CPU, patch the network's
        input size).
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices

    roi = window.roi_3d(image_size)
    interval = _scan_interval(image_size, roi, window.overlap)
    windows = dense_patch_slices(tuple(image_size), roi, interval, return_slice=True)
    if window.weight_map is not None and window.slice_axis is None:
        importance = window.weight_map.to("cpu", torch.float32)
    else:
        importance = compute_importance_map(roi, mode=window.mode, sigma_scale=window.sigma_scale,
                                            device="cpu", dtype=torch.float32)
    tiles: list[Tile] = []
    for spatial in windows:
        parts: list[slice | int] = list(spatial)
        if window.slice_axis is not None:
            parts[window.slice_axis] = int(spatial[window.slice_axis].start)
        tiles.append((slice(None), *parts))
    if window.slice_axis is not None:
        importance = importance.squeeze(window.slice_axis)
    return tiles, importance


@torch.no_grad()
def stitched_logits(network: nn.Module, data: torch.Tensor, tiles: Sequence[Tile], importance: torch.Tensor,
                    progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The stitched logits ``sum_p w_p logit_p / sum_p w_p``, accumulated in MONAI's order.

    Args:
        network: In eval mode, on data's device; maps (1, C, *patch) to (1, K, *patch).
        data: Padded (C, *S) input.
        tiles: From ``window_tiles``.
        importance: (*patch) weights.
        progress: Called as progress(done, total) per tile.

    Returns:
        (K, *S) float32 logits on data's device.
    """
    importance = importance.to(data.device, torch.float32)
    weight_sum = torch.zeros(data.shape[1:], dtype=torch.float32, device=data.device)
    for tile in tiles:
        weight_sum[tile[1:]] += importance
    logits = None
    for done, tile in enumerate(tiles, 1):
        out = network(data[tile][None])[0].float()
        if logits is None:
            logits = torch.zeros((out.shape[0], *data.shape[1:]), dtype=torch.float32, device=data.device)
        logits[(slice(None), *tile[1:])] += out * importance
        if progress is not None:
            progress(done, len(tiles))
    return logits / weight_sum
