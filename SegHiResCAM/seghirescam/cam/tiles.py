"""CAMs of a sliding-window prediction: the target is the stitched logit, explained tile by tile.

A sliding-window model (nnU-Net, MONAI) predicts tiles p and stitches them: the stitched logit
at voxel v is ``sum_p w_p(v) logit_p(v) / W(v)``, with w the importance map (e.g. a Gaussian) and
W the summed weights. The explained score is ``y_M = sum over M of the stitched class-c logit``,
averaged over ensemble members and test-time flips the way the prediction averages them. It
splits exactly into per-tile scores ``y_p = sum_v a_p(v) logit_p,c(v)`` with
``a_p = M w_p / W / (members x flips)``, so each tile holding M gets one forward and one backward
(the engine's capture: the graph starts at the earliest explained layer); its pre-ReLU maps are
upsampled to the tile size (bilinear in 2D, trilinear in 3D) and summed into the volume, and the
ReLU comes once at the end. Seg-HiRes-Grad CAM at the layer feeding a 1x1 head then keeps its
exactness identity for the whole volume: the sum of the layer-resolution maps equals y_M minus
the head's bias terms (``TileExplanation.raw_sums``, ``y_m``).

Arrays: data (C, *S) with S the padded frame's spatial shape; mask (*S) bool; tiles are slicers
into (C, *S) whose spatial part is ``tile[1:]`` (an int on an axis means a 2D network sees that
slice); importance (*patch) with patch the network's input size. Tiles without M are not run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from seghirescam.cam.capture import evaluation_mode
from seghirescam.cam.engine import layer_maps
from seghirescam.cam.methods import CAMMethod
from seghirescam.cam.result import ExplanationCancelled

__all__ = ["TileExplanation", "explain_tiles"]

Tile = tuple[Union[slice, int], ...]
MapKey = tuple[str, str]


@dataclass
class TileExplanation:
    """Maps of a tiled volume and the quantities of the exactness identity.

    Attributes:
        maps: ``{(method, layer): (*S) float32 tensor}`` after the final ReLU, in the tiles' frame.
        raw_sums: ``{(method, layer): float}``: the sum over tiles (and members, flips) of the
            pre-ReLU maps at layer resolution.
        y_m: The explained score, sum over M of the stitched class-c logits (float64).
        tiles_run: Tiles that held M (per member and flip).
        tiles_total: All tiles of the sliding window.
    """

    maps: dict[MapKey, torch.Tensor]
    raw_sums: dict[MapKey, float]
    y_m: float
    tiles_run: int
    tiles_total: int


def explain_tiles(network: nn.Module, data: torch.Tensor, mask: torch.Tensor, tiles: Sequence[Tile],
                  importance: torch.Tensor, target_class: int, layers: Sequence[str], methods: Sequence[CAMMethod], *,
                  members: Sequence[Callable[[], None]] = (), flips: Sequence[tuple[int, ...]] = ((),),
                  progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None, autocast: str | None = None) -> TileExplanation:
    """Explain y_M of a stitched sliding-window prediction.

    Args:
        network: The network; explained in eval mode (its flags restored afterwards).
        data: The padded input (C, *S), float32, on the network's device.
        mask: M (*S) bool, same device.
        tiles: The sliding window's tiles (slicers into ``data``).
        importance: The importance map (*patch) the prediction weights tiles with.
        target_class: Class c.
        layers: Layer names of ``network``.
        methods: Resolved methods from the registry.
        members: Ensemble members: each callable loads one member's weights into ``network``
            (empty: the network as it is).
        flips: Test-time mirrorings as tensor axes of a (1, C, *patch) batch; ``()`` = none.
        progress: Called as progress(done, total) after each tile (total = tiles with M x
            members x flips).
        cancel: Called before each tile; returning True raises ``ExplanationCancelled``.
        autocast: None (float32) or "bf16" (``cam.engine.layer_maps``).

    Returns:
        The maps in the tiles' (padded) frame and the identity quantities.

    Raises:
        ValueError: If M is empty or shapes disagree, or for a method whose per-tile maps do not add up to
            the volume's map (``CAMMethod.stitchable``: CAM, Ablation, Score, FullGrad).
        ExplanationCancelled: If ``cancel()`` returned True.
    """
    refused = [method.key for method in methods if not method.stitchable]
    if refused:
        raise ValueError(f"{', '.join(refused)} cannot explain a sliding-window (tiled) model: per-tile maps of these "
                         "methods are normalised per tile or relative to the tile's own score, so they are no parts of "
                         "one volume map; use a gradient method or seg-lift-cam")
    if mask.shape != data.shape[1:]:
        raise ValueError(f"M has shape {tuple(mask.shape)} but the data's frame is {tuple(data.shape[1:])}")
    importance = importance.float().to(data.device)
    weight_sum = torch.zeros(data.shape[1:], dtype=torch.float32, device=data.device)
    for tile in tiles:
        weight_sum[tile[1:]] += importance
    used = [tile for tile in tiles if bool(mask[tile[1:]].any())]
    if not used:
        raise ValueError("the pixel set M is empty in the network's frame: nothing to explain")
    loaders = list(members) or [lambda: None]
    share = 1.0 / (len(loaders) * len(flips))
    total_steps, done = len(used) * len(loaders) * len(flips), 0
    volumes = {(m.name, layer): torch.zeros(data.shape[1:], dtype=torch.float32, device=data.device)
               for m in methods for layer in layers}
    raw_sums = dict.fromkeys(volumes, 0.0)
    y_m = 0.0
    with evaluation_mode(network):
        for load in loaders:
            load()
            for tile in used:
                region = tile[1:]
                coefficients = mask[region].float() * importance / weight_sum[region] * share
                x = data[tile][None]
                patch = tuple(x.shape[2:])
                for axes in flips:
                    if cancel is not None and cancel():
                        raise ExplanationCancelled(f"cancelled after {done} of {total_steps} tiles")
                    spatial = tuple(a - 2 for a in axes)
                    flipped = torch.flip(coefficients, spatial) if axes else coefficients
                    maps, score = layer_maps(network, torch.flip(x, axes) if axes else x, flipped[None],
                                             target_class, layers, methods, autocast)
                    y_m += score
                    for key, layer_map in maps.items():
                        raw_sums[key] += float(layer_map.double().sum())
                        up = layer_map[:, None]  # (1, 1, *s)
                        if tuple(up.shape[2:]) != patch:
                            up = F.interpolate(up, size=patch, mode="trilinear" if len(patch) == 3 else "bilinear",
                                               align_corners=False)
                        up = up[0, 0]
                        volumes[key][region] += torch.flip(up, spatial) if axes else up
                    done += 1
                    if progress is not None:
                        progress(done, total_steps)
    return TileExplanation({key: volume.clamp_min_(0) for key, volume in volumes.items()}, raw_sums, y_m,
                           len(used), len(tiles))
