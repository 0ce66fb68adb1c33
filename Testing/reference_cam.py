"""The CAMs written the obvious way, as a reference for the engine.

One slice at a time, a full forward pass with a plain hook, ``torch.autograd.grad``, and
the formulas, pooling and bilinear upsampling in numpy (float64).
"""

from __future__ import annotations

import numpy as np
import torch


def bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with align_corners=False semantics (half-pixel centres, edge clamp)."""

    def weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, wr = weights(a.shape[0], height)
    c0, c1, wc = weights(a.shape[1], width)
    top = a[r0][:, c0] * (1 - wc) + a[r0][:, c1] * wc
    bottom = a[r1][:, c0] * (1 - wc) + a[r1][:, c1] * wc
    return top * (1 - wr[:, None]) + bottom * wr[:, None]


def xres_pool(g: np.ndarray, p: int, reduce: str) -> np.ndarray:
    """Each element replaced by the max/mean of its p x p window (windows cut at the border)."""
    out = np.empty_like(g)
    for u0 in range(0, g.shape[1], p):
        for v0 in range(0, g.shape[2], p):
            window = g[:, u0:u0 + p, v0:v0 + p]
            value = window.max(axis=(1, 2)) if reduce == "max" else window.mean(axis=(1, 2))
            out[:, u0:u0 + p, v0:v0 + p] = value[:, None, None]
    return out


def pre_relu(method: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    if method == "seg-grad-cam":
        return (g.mean(axis=(1, 2))[:, None, None] * a).sum(0)
    if method == "seg-hires-grad-cam":
        return (g * a).sum(0)
    if method == "seg-xres-cam":
        return (xres_pool(g, 2, "max") * a).sum(0)
    raise ValueError(method)


def activations_and_gradient(model, slice_2d: np.ndarray, m: np.ndarray, c: int, layer: str, multiple: int):
    """A and dy_M/dA (K, h, w) for one slice, padded with edge values to ``multiple``."""
    h, w = slice_2d.shape
    padded = np.pad(slice_2d, ((0, -h % multiple), (0, -w % multiple)), mode="edge")
    m_padded = np.pad(m, ((0, -h % multiple), (0, -w % multiple)))
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, out: store.update(a=out))
    try:
        logits = model(torch.tensor(padded, dtype=torch.float32)[None, None])
    finally:
        handle.remove()
    y = (logits[0, c] * torch.tensor(m_padded)).sum()
    (grad,) = torch.autograd.grad(y, store["a"])
    return store["a"][0].detach().double().numpy(), grad[0].double().numpy(), padded.shape


def reference_volume(model, volume, mask, c, layer, method, axis, multiple) -> np.ndarray:
    """Un-normalised maps of the volume's shape, computed slice by slice."""
    out = np.zeros(volume.shape)
    out_view = np.moveaxis(out, axis, 0)
    for s, (slice_2d, m) in enumerate(zip(np.moveaxis(volume, axis, 0), np.moveaxis(mask, axis, 0))):
        if not m.any():
            continue
        a, g, padded_shape = activations_and_gradient(model, slice_2d, m, c, layer, multiple)
        cam = np.maximum(pre_relu(method, a, g), 0)
        out_view[s] = bilinear(cam, *padded_shape)[: m.shape[0], : m.shape[1]]
    return out
