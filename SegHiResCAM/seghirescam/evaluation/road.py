"""ROAD's noisy linear imputation (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML): removed pixels are replaced by the weighted mean of their neighbours.

Every removed pixel i satisfies sum_j w_ij (x_i - x_j) = 0 over its 8 neighbours j inside the image
(w = 1/6 for the 4 direct neighbours, 1/12 for the diagonal ones), known pixels keep their values:
a sparse linear system per image and channel, solved exactly; then Gaussian noise (std ``noise``)
is added to the imputed pixels, as in ROAD's ``NoisyLinearImputer``. Unlike a blur or a constant
fill, the filled region carries (almost) no trace of its own outline, so a map cannot win by
leaking the shape of M into the perturbed image.

Arrays: x (N, C, H, W) float tensors, remove (N, H, W) bool arrays.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg
import torch

__all__ = ["road_impute", "road_impute_image", "NEIGHBOUR_WEIGHTS", "ROAD_NOISE"]

NEIGHBOUR_WEIGHTS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
                     (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12))
ROAD_NOISE = 0.01  # ROAD's default, in the units of the network input (here: z-scored HU, 0.01 ~ 1 HU)


def road_impute_image(image: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """Linear imputation (without noise) of the removed pixels of one (H, W) image.

    Args:
        image: (H, W) values.
        remove: (H, W) bool, the pixels to impute; at least one pixel must be kept (an image with
            nothing kept has no values to impute from: its mean is returned everywhere).

    Returns:
        (H, W) float64: kept pixels unchanged, removed ones imputed.
    """
    image = np.asarray(image, dtype=np.float64)
    remove = np.asarray(remove, dtype=bool)
    if not remove.any():
        return image.copy()
    if remove.all():
        return np.full_like(image, image.mean())
    height, width = image.shape
    index = np.full(image.shape, -1, dtype=np.int64)
    unknown = np.flatnonzero(remove.ravel())
    index.ravel()[unknown] = np.arange(unknown.size)
    rows, cols = np.divmod(unknown, width)
    n = unknown.size
    diagonal = np.zeros(n)
    rhs = np.zeros(n)
    entries_r, entries_c, entries_v = [], [], []
    for dr, dc, weight in NEIGHBOUR_WEIGHTS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        own = np.flatnonzero(inside)
        neighbour = index[r[inside], c[inside]]
        diagonal[own] += weight
        known = neighbour < 0
        rhs[own[known]] += weight * image[r[inside][known], c[inside][known]]
        entries_r.append(own[~known])
        entries_c.append(neighbour[~known])
        entries_v.append(np.full(int((~known).sum()), -weight))
    matrix = sparse.csr_matrix((np.concatenate([diagonal, *entries_v]),
                                (np.concatenate([np.arange(n), *entries_r]), np.concatenate([np.arange(n), *entries_c]))),
                               shape=(n, n))
    result = image.copy()
    result.ravel()[unknown] = sparse_linalg.spsolve(matrix.tocsc(), rhs)
    return result


def road_impute(x: torch.Tensor, remove: np.ndarray, rng: np.random.Generator, *, noise: float = ROAD_NOISE) -> torch.Tensor:
    """ROAD's noisy linear imputation of a batch.

    Args:
        x: (N, C, H, W) input.
        remove: (N, H, W) bool, pixels to impute (the same for every channel).
        rng: Draws the noise (seeded by the caller: the same state gives the same images).
        noise: Std of the Gaussian noise added to imputed pixels.

    Returns:
        (N, C, H, W) float32 on x's device; x is not modified.
    """
    array = x.detach().float().cpu().numpy()
    remove = np.asarray(remove, dtype=bool)
    out = array.copy()
    jobs = [(n, c) for n in range(array.shape[0]) if remove[n].any() for c in range(array.shape[1])]
    # SuperLU releases the GIL: the images are solved on the CPU's cores; the noise is drawn in job order,
    # so the result does not depend on the number of threads.
    with ThreadPoolExecutor(max_workers=_solver_threads(len(jobs))) as pool:
        solved = pool.map(lambda job: road_impute_image(array[job[0], job[1]], remove[job[0]]), jobs)
        for (n, c), filled in zip(jobs, solved):
            filled[remove[n]] += noise * rng.standard_normal(int(remove[n].sum()))
            out[n, c] = filled
    return torch.from_numpy(out).to(x.device)


def _solver_threads(jobs: int) -> int:
    """Threads for ``jobs`` sparse solves: the CPUs this process may use (at least 1, at most ``jobs``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, jobs))
