"""What every sliding-window family shares: checking an explanation's inputs, and the result on the CT's grid.

Arrays: the CT and M in the CT's (k, j, i) order; maps brought back to that grid as (K, k, j, i),
one per (method, layer) key, before the ReLU that clears interpolation undershoot.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from seghirescam.cam.normalization import check_normalize, normalize_maps
from seghirescam.cam.result import ExplanationResult
from seghirescam.cam.tiles import TileExplanation
from seghirescam.imaging.volumes import Volume, axial_axis

__all__ = ["checked_layers", "result_on_ct_grid"]


def checked_layers(ct: Volume, mask: np.ndarray, target_class: int, class_names: Sequence[str],
                   layers: Sequence[str] | None, known_layers: Sequence[str], default_layer: str,
                   normalize: str) -> tuple[str, ...]:
    """Validate an explanation's inputs before any work.

    Returns:
        The layers to explain (the default layer when none are given).

    Raises:
        ValueError: M not a bool array of the CT's shape, a class out of range, an unknown layer
            or normalize mode (each message lists the choices).
    """
    if not isinstance(mask, np.ndarray) or mask.shape != ct.array.shape or mask.dtype != np.bool_:
        raise ValueError(f"M must be a bool array of the CT's shape {ct.array.shape}, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}")
    if not 0 <= int(target_class) < len(class_names):
        raise ValueError(f"target class {target_class} is out of range: the model's classes are "
                         f"{', '.join(class_names)}")
    check_normalize(normalize)
    layers = tuple(layers or (default_layer,))
    unknown = [layer for layer in layers if layer not in known_layers]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; the model's layers are {', '.join(known_layers)}")
    return layers


def result_on_ct_grid(back: np.ndarray, keys: Sequence[tuple[str, str]], ct: Volume, mask: np.ndarray,
                      target_class: int, tiles: TileExplanation, *, normalize: str, map_dtype: np.dtype | type,
                      device: str, started: float, extra: dict) -> ExplanationResult:
    """The ``ExplanationResult`` of a tiled explanation whose maps are back on the CT's grid.

    Args:
        back: Maps (K, k, j, i) on the CT's grid, one per key, in ``keys`` order (ReLU'd in place: consumed).
        keys: The (method, layer) of each map.
        ct, mask, target_class: What was explained (M bool (k, j, i)).
        tiles: The tiled explanation (y_M, exactness sums, tile counts).
        normalize: "volume", "slice" (per axial slice) or "none".
        map_dtype: dtype of the returned maps.
        device: Where it ran.
        started: ``time.perf_counter()`` at the start of the run.
        extra: Family-specific metadata, merged into ``result.extra``.

    Returns:
        Maps >= 0 normalized as asked; ``axis`` is the CT's axial axis; ``extra`` holds y_M, the
        exactness sums (``raw_sums``) and the tile counts.
    """
    axis = axial_axis(ct.geometry)
    maps, scales = {}, {}
    for index, key in enumerate(keys):
        volume = np.maximum(back[index], 0, out=back[index]).astype(map_dtype, copy=False)  # in place: no copy
        scales[key] = normalize_maps(np.moveaxis(volume, axis, 0), normalize)
        maps[key] = volume
    slices = np.flatnonzero(np.moveaxis(mask, axis, 0).any(axis=(1, 2)))
    extra = {**extra, "tiles_run": tiles.tiles_run, "tiles_total": tiles.tiles_total, "y_m": tiles.y_m,
             "raw_sums": {f"{method}@{layer}": value for (method, layer), value in tiles.raw_sums.items()}}
    return ExplanationResult(maps=maps, scales=scales, slices_explained=tuple(int(s) for s in slices),
                             slices_skipped=int(mask.shape[axis] - slices.size), axis=axis,
                             target_class=int(target_class), normalize=normalize, device=device,
                             batch_size=1, seconds=time.perf_counter() - started, extra=extra)
