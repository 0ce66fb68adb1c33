"""Procedural KiTS23-style abdominal CT phantoms (portal-venous contrast) with kidney labels.

The anatomy is drawn in millimetres in LPS patient space (x to the patient's Left, y Posterior,
z Superior, centred on 0) and then sampled on the requested grid, so one seed is one patient at
any shape or spacing. Arrays are (k, j, i) = (slices, rows, columns): row j grows posterior
(anterior at the top of an axial image) and column i grows to the patient's left, so the right
kidney is on the image's left, as radiologists view it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seghirescam.imaging.geometry import Geometry

__all__ = ["LABELS", "Phantom", "make_phantom"]

LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
_SIDE_CODE = {-1: 1, 1: 2}  # x sign of a kidney -> its code in `sides`: 1 patient's right, 2 left
_TUMOR_SIDES = ("right", "left", "random")


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT with its labels.

    Attributes:
        ct: int16 Hounsfield units, shape (k, j, i).
        labels: uint8 KiTS labels (see LABELS), same shape.
        sides: uint8, 0 none, 1 the patient's right kidney, 2 the left (their lesions included).
        geometry: Where the array sits in LPS space (identity direction, centred on 0).
        body: bool, inside the body outline.
    """

    ct: np.ndarray
    labels: np.ndarray
    sides: np.ndarray
    geometry: Geometry
    body: np.ndarray


def _unit(v) -> np.ndarray:
    return np.asarray(v, float) / np.linalg.norm(v)


def _segment(p0, p1) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, unit axis and length of the segment p0-p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    return (p0 + p1) / 2, _unit(p1 - p0), float(np.linalg.norm(p1 - p0))


def _blur3(a: np.ndarray, axes: tuple[int, ...], w: float = 0.22) -> np.ndarray:
    """Separable [w, 1-2w, w] smoothing of `a` in place along `axes` (a cheap partial-volume blur)."""
    for ax in axes:
        v = np.moveaxis(a, ax, 0)
        v[1:-1] = w * (v[:-2] + v[2:]) + (1 - 2 * w) * v[1:-1]
    return a


def _smooth_noise(shape: tuple[int, ...], spacing_kji: np.ndarray, rng, cell_mm: float = 7.0) -> np.ndarray:
    """Unit-variance noise, smooth over ~cell_mm: coarse white noise, blurred, linearly upsampled."""
    coarse = np.ceil(np.array(shape) * spacing_kji / cell_mm).astype(int) + 3
    field = _blur3(rng.standard_normal(tuple(coarse)).astype(np.float32), (0, 1, 2), 0.3)
    for ax, n in enumerate(shape):
        pos = np.linspace(0.5, coarse[ax] - 1.5, n)
        lo = pos.astype(int)
        frac = (pos - lo).astype(np.float32).reshape([-1 if d == ax else 1 for d in range(3)])
        field = np.take(field, lo, axis=ax) * (1 - frac) + np.take(field, lo + 1, axis=ax) * frac
    return field / field.std()


class _Canvas:
    """The HU, label and side volumes being painted, with voxel-centre coordinates in mm."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], an: dict, rng):
        self.z, self.y, self.x = ((np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing[::-1]))
        self.spacing_kji = np.array(spacing[::-1])
        self.hu = np.full(shape, -1000.0, np.float32)
        self.labels, self.sides = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        self.tex = _smooth_noise(shape, self.spacing_kji, rng)
        self.scale = 1 + 0.03 * np.sin(self.z / 110 + an["z_phase"])  # body size along z
        yy, xx = self.y[:, None], self.x[None, :]
        p, back = np.where(yy > 0, an["p_post"], 2.0), np.where(yy > 0, 0.6, 1.0)  # flatter back, less fat
        self.radius = {  # normalized 2D superellipse radius of each body layer (1 on its outline)
            name: (np.abs(xx / (an["a"] - t)) ** p + np.abs(yy / (an["b"] - t * back)) ** p) ** (1 / p)
            for name, t in (("body", 0), ("skin", 2.5), ("wall", an["fat"]), ("cavity", an["fat"] + 10))}

    def inside(self, layer: str, sl=(slice(None),) * 3) -> np.ndarray:
        """Boolean mask, on the sub-box `sl`, of the voxels inside a body layer."""
        return self.radius[layer][None, sl[1], sl[2]] <= self.scale[sl[0], None, None]

    def box(self, centre, half):
        """Slices of the voxels within centre +- half (mm, x y z) and their x, y, z offsets; None if empty."""
        sl, rel = [], []
        for dim, (ax, c, h) in enumerate(zip((self.z, self.y, self.x), centre[::-1], half[::-1])):
            lo, hi = np.searchsorted(ax, [c - h, c + h])
            if lo >= hi:
                return None
            sl.append(slice(lo, hi))
            rel.append((ax[lo:hi] - c).astype(np.float32).reshape([-1 if d == dim else 1 for d in range(3)]))
        return tuple(sl), rel[::-1]

    def capsule(self, centre, axis, length: float, radius: float):
        """Box, distance (mm) to the segment, and y offset from its axis, of the voxels near a capsule."""
        hit = self.box(centre, np.abs(axis) * length / 2 + radius)
        if hit is None:
            return None
        sl, (x, y, z) = hit
        ax, ay, az = map(float, axis)
        t = np.clip(x * ax + y * ay + z * az, -length / 2, length / 2)
        dy = y - t * ay
        return sl, np.sqrt((x - t * ax) ** 2 + dy**2 + (z - t * az) ** 2), dy


def _draw_kidney(rng, sign: int, z: float, yv: float) -> dict:
    """Random pose, size and shape of one kidney (sign -1 patient's right, +1 left)."""
    e_u = _unit([-sign * rng.uniform(0.1, 0.3), rng.uniform(0.05, 0.25), 1.0])  # upper pole medial, posterior
    yaw = np.radians(rng.uniform(25, 45))  # lateral border turned posteriorly: hilum faces anteromedially
    e_v = np.array([sign * np.cos(yaw), np.sin(yaw), 0.0])
    e_v = _unit(e_v - (e_v @ e_u) * e_u)
    waves = [(rng.normal(0, 1 / 15, 3), rng.uniform(0.02, 0.05), rng.uniform(0, 6.3)) for _ in range(3)]
    return dict(c=np.array([sign * rng.uniform(62, 75), yv + rng.uniform(5, 15), z]), sign=sign,
                R=np.stack([e_u, e_v, np.cross(e_u, e_v)], axis=1), waves=waves, pyr=rng.uniform(0, 6.3),
                semi=rng.uniform([50, 27, 18], [60, 33, 22]), bend=rng.uniform(0.1, 0.25),
                cortex=rng.uniform(170, 190), medulla=rng.uniform(110, 130))


def _draw_lesion(rng, r_range, rho_range, hilum_ok: bool) -> dict:
    """A lesion: local direction and radial fraction in its kidney, radius, lobes, enhancement, side."""
    d = rng.normal(size=3)
    if not hilum_ok and d[1] < -0.2 * np.linalg.norm(d):
        d[1] = -d[1]  # tumors grow from the parenchyma, not from the sinus
    lobes = [(rng.normal(size=3), rng.uniform(0.45, 0.75)) for _ in range(3)]
    return dict(d=d, rho=rng.uniform(*rho_range), r=rng.uniform(*r_range), lobes=lobes[: rng.integers(0, 4)],
                hu=rng.uniform(85, 130), necrotic=rng.random() < 0.5, side=int(rng.integers(2)))


def _draw_anatomy(rng) -> dict:
    """Every random number of the patient, in a fixed order that does not depend on the grid."""
    u = rng.uniform
    an = dict(a=u(150, 172), b=u(110, 124), fat=u(10, 25), p_post=u(2.4, 3.0), z_phase=u(0, 6.3), disc0=u(0, 36))
    an["yv"] = yv = an["b"] - 0.6 * an["fat"] - u(66, 74)  # centre of the vertebral body (y)
    z_left = u(0, 25)
    an["kidneys"] = [_draw_kidney(rng, -1, z_left - u(10, 25), yv), _draw_kidney(rng, 1, z_left, yv)]
    an["tumor"] = _draw_lesion(rng, (10, 22), (0.55, 1.05), False)
    an["cyst"] = _draw_lesion(rng, (5, 15), (0.5, 0.95), True)
    an["liver"] = dict(c=[-u(60, 75), u(-15, 5), u(120, 140)], semi=[u(60, 75), u(70, 85), u(140, 155)],
                       hu=u(100, 120), shear=u(0.3, 0.45))
    an["spleen"] = dict(c=[u(75, 95), u(30, 50), u(60, 90)], semi=[u(25, 35), u(45, 60), u(50, 70)], hu=u(115, 130))
    an["aorta"] = (u(5, 14), yv - 30, u(9, 12), u(165, 195))
    an["ivc"] = (-u(20, 28), yv - 24, u(11, 15), u(120, 145))
    kinds = ("fluid", "level", "gas")
    loops = [(np.array([u(-110, 110), u(-an["b"] * 0.85, yv - 20), u(-200, 30)]), _unit(rng.normal(size=3)),
              u(40, 100), u(10, 17), kinds[rng.choice(3, p=[0.55, 0.3, 0.15])]) for _ in range(100)]
    others = [((-u(85, 100), yv - u(15, 35), -200), (-u(80, 95), yv - u(20, 40), 0), u(18, 24), "stool"),  # ascending
              ((u(88, 100), yv - u(10, 30), -200), (u(85, 98), yv - u(15, 30), 70), u(16, 22), "stool"),  # descending
              ((-90, -an["b"] * u(0.4, 0.6), u(10, 40)), (90, -an["b"] * u(0.3, 0.5), u(40, 70)), u(16, 22), "stool"),
              ((u(20, 40), -u(40, 60), 70), (u(55, 75), -u(10, 30), 200), u(35, 45), "level"),  # stomach
              ((-u(25, 35), yv - 60, u(-5, 5)), (-10, yv - 60, u(20, 30)), u(12, 16), "solid"),  # pancreas head
              ((-10, yv - 60, 25), (u(60, 80), yv - u(15, 30), u(40, 60)), u(8, 11), "solid")]  # body, tail
    an["bowel"] = loops + [(*_segment(p0, p1), r, kind) for p0, p1, r, kind in others]
    return an


def _paint_bowel(cv: _Canvas, an: dict) -> None:
    """Bowel, colon, stomach (enhancing wall; fluid, gas over an air-fluid level, or stool) and pancreas."""
    for centre, axis, length, radius, kind in an["bowel"]:
        hit = cv.capsule(centre, axis, length, radius)
        if hit is None:
            continue
        sl, dist, dy = hit
        cavity, hu, tex = cv.inside("cavity", sl), cv.hu[sl], cv.tex[sl]
        if kind == "solid":  # lobulated pancreas
            mask = (dist <= radius * (1 + 0.15 * tex)) & cavity
            hu[mask] = (100 + 10 * tex)[mask]
            continue
        hu[cavity & (dist <= radius)] = 100
        lumen = cavity & (dist <= radius - 3)
        hu[lumen] = np.where(tex > 0.9, -1000, -40 + 50 * tex)[lumen] if kind == "stool" else 15
        gas_top = {"level": -0.1, "gas": 0.6, "stool": -0.5}.get(kind)  # gas rises anteriorly (supine)
        if gas_top is not None:
            hu[lumen & (dy < gas_top * radius)] = -1000


def _paint_solid_organs(cv: _Canvas, an: dict) -> None:
    """Liver (sheared so that its right lobe hangs laterally) and spleen, in the peritoneal cavity."""
    for organ in (an["liver"], an["spleen"]):
        (a, b, c), shear = organ["semi"], organ.get("shear", 0.0)
        hit = cv.box(np.asarray(organ["c"]), np.array([a + shear * c, b, c]))
        if hit is not None:
            sl, (x, y, z) = hit
            inside = ((x - shear * z) / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1
            cv.hu[sl][inside & cv.inside("cavity", sl)] = organ["hu"]


def _kidney_point(k: dict, direction, rho: float) -> np.ndarray:
    """World position at fraction rho of the kidney's radius along a local (u, v, w) direction."""
    local = rho * _unit(direction) * k["semi"]
    local[1] -= k["bend"] * k["semi"][1] * (local[0] / k["semi"][0]) ** 2
    return k["c"] + k["R"] @ local


def _kidney_fields(cv: _Canvas, k: dict):
    """Box and normalized radii (kidney, perirenal fat, sinus, pelvis) and pyramid angle of a kidney."""
    hit = cv.box(k["c"], np.full(3, k["semi"][0] + 25))
    if hit is None:
        return None
    sl, rel = hit
    u, v, w = (sum(float(k["R"][n, m]) * rel[n] for n in range(3)) for m in range(3))
    a, b, c = map(float, k["semi"])
    v = v + k["bend"] * b * (u / a) ** 2  # bean: the poles bend medially
    wobble = 1 + sum(amp * np.sin(f[0] * u + f[1] * v + f[2] * w + ph) for f, amp, ph in k["waves"])
    radius = lambda ca, cb, cc, dv=0.0: np.sqrt((u / ca) ** 2 + ((v + dv) / cb) ** 2 + (w / cc) ** 2)  # noqa: E731
    return sl, dict(r=radius(a, b, c) * wobble, fat=radius(a + 14, b + 14, c + 12) * wobble,
                    sinus=radius(0.55 * a, 0.55 * b, 0.5 * c, 0.5 * b), phi=np.arctan2(u / a, w / c),
                    pelvis=radius(0.25 * a, 0.35 * b, 0.3 * c, 0.8 * b))


def _paint_kidney(cv: _Canvas, an: dict, k: dict, sl, f: dict) -> None:
    """Cortex, medullary pyramids, sinus fat, pelvis and renal vein of a kidney; sets labels and sides."""
    hu = cv.hu[sl]
    sinus = (f["sinus"] <= 1) & (f["r"] <= 1.08)
    hu[sinus] = -80
    hu[f["pelvis"] <= 1] = 10
    parenchyma = (f["r"] <= 1) & ~sinus & (f["pelvis"] > 1)
    hu[parenchyma] = k["cortex"]
    hu[parenchyma & (f["r"] < 0.8) & (f["sinus"] > 1.2) & (np.cos(7 * f["phi"] + k["pyr"]) > -0.35)] = k["medulla"]
    cv.labels[sl][parenchyma] = LABELS["kidney"]
    cv.sides[sl][parenchyma] = _SIDE_CODE[k["sign"]]
    (ax, ay, ar, _), (ix, iy, _, ihu) = an["aorta"], an["ivc"]
    hilum = _kidney_point(k, [0.0, -1.0, 0.0], 1.0)
    path = [hilum, np.array([ax, ay - ar - 6, hilum[2]])] if k["sign"] > 0 else [hilum]  # left: ventral to aorta
    for p0, p1 in zip(path, path[1:] + [np.array([ix, iy, hilum[2]])]):
        hit = cv.capsule(*_segment(p0, p1), 5.0)
        if hit is not None:
            vsl, dist, _ = hit
            cv.hu[vsl][(dist <= 5) & (cv.labels[vsl] == 0) & (cv.hu[vsl] < 100)] = ihu


def _paint_retroperitoneum(cv: _Canvas, an: dict) -> None:
    """Paraspinal, quadratus and psoas muscles, vertebra (body, disc, canal, arch), aorta, IVC, SMA, SMV."""
    x, y, z, yv = cv.x[None, :], cv.y[:, None], cv.z, an["yv"]
    ell = lambda cx, cy, rx, ry: ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1  # noqa: E731

    def paint(mask2d, value, zsel=None):
        where = mask2d[None] if zsel is None else mask2d[None] & zsel[:, None, None]
        np.copyto(cv.hu, value if np.ndim(value) else np.float32(value), where=where)

    for s in (-1, 1):
        paint(ell(s * 36, yv + 50, 28, 24) | ell(s * 60, yv + 40, 16, 9), 50)
        for zsel, g in ((z >= 0, 1.0), (z < 0, 1.5)):  # psoas thickens caudally
            paint(ell(s * (25 + 8 * g), yv + 4, 10 * g, 12 * g), 50, zsel)
    level = np.mod(z - an["disc0"], 36)  # 28 mm vertebrae and 8 mm discs
    paint(ell(0, yv + 30, 14, 14) & (y > yv + 14) | ell(0, yv + 52, 4, 14), 600)  # arch, spinous process
    paint(ell(-28, yv + 30, 20, 5) | ell(28, yv + 30, 20, 5), 600, (level > 14) & (level < 26))  # transverse
    paint(ell(0, yv + 30, 9, 9), 10)  # spinal canal
    paint(ell(0, yv, 23, 18), 700)
    paint(ell(0, yv, 19.5, 15), 210 + 25 * cv.tex, level >= 8)  # cancellous bone
    paint(ell(0, yv, 23, 18), 90, level < 8)  # intervertebral disc
    (ax, ay, ar, ahu), (ix, iy, ir, ihu) = an["aorta"], an["ivc"]
    paint(ell(ax, ay, ar, ar), ahu)
    paint(ell(ax - 3, ay - ar - 14, 4, 4), ahu, z < 30)  # superior mesenteric artery
    paint(ell(ax - 18, ay - ar - 16, 6, 6), ihu + 15, z < 30)  # and vein
    paint(ell(ix, iy, ir, ir * 0.7), ihu)


def _paint_lesion(cv: _Canvas, k: dict, les: dict, label: int) -> None:
    """A tumor (enhancing, lobulated, maybe necrotic) or a cyst (water, round, sharp) in kidney k."""
    r = les["r"]
    hit = cv.box(_kidney_point(k, les["d"], les["rho"]), np.full(3, 1.5 * r))
    if hit is None:
        return
    sl, (x, y, z) = hit
    mask = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)
    for (ox, oy, oz), rr in [((0, 0, 0), r)] + [(0.6 * r * _unit(d), f * r) for d, f in les["lobes"]]:
        mask |= (x - ox) ** 2 + (y - oy) ** 2 + (z - oz) ** 2 <= rr**2
    nearest = tuple(int(np.argmin(np.abs(a.ravel()))) for a in (z, y, x))
    if not mask.any() and all(abs(a.ravel()[n]) <= s / 2 for a, n, s in zip((z, y, x), nearest, cv.spacing_kji)):
        mask[nearest] = True  # smaller than the grid but centred in it: keep one voxel
    if not mask.any():
        return
    tex = cv.tex[sl] - cv.tex[sl][mask].mean()  # heterogeneity that keeps the lesion's mean HU
    if label == LABELS["cyst"]:
        value = 8 + 2 * tex
    else:
        core = les["necrotic"] and r > 14
        value = np.where(core & (x**2 + y**2 + z**2 < (0.45 * r) ** 2), 30 + 8 * tex, les["hu"] + 15 * tex)
    cv.hu[sl][mask] = np.broadcast_to(value, mask.shape)[mask]
    cv.labels[sl][mask] = label
    cv.sides[sl][mask] = _SIDE_CODE[k["sign"]]


def _check_args(seed, shape, spacing, tumor_side, noise_hu) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Validated (shape, spacing); raises ValueError naming the bad argument."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    is_int = lambda n: isinstance(n, (int, np.integer)) and not isinstance(n, bool)  # noqa: E731
    if not isinstance(shape, (tuple, list, np.ndarray)) or len(shape) != 3 or not all(map(is_int, shape)):
        raise ValueError(f"shape must be 3 integers (slices, rows, cols), got {shape!r}")
    if shape[0] < 8 or not all(64 <= n <= 512 for n in shape[1:]):
        raise ValueError(f"shape needs >= 8 slices and 64..512 rows and cols, got {tuple(shape)}")
    is_mm = lambda s: isinstance(s, (int, float, np.number)) and np.isfinite(s) and s > 0  # noqa: E731
    if not isinstance(spacing, (tuple, list, np.ndarray)) or len(spacing) != 3 or not all(map(is_mm, spacing)):
        raise ValueError(f"spacing must be 3 positive finite mm values (i, j, k), got {spacing!r}")
    if tumor_side not in _TUMOR_SIDES:
        raise ValueError(f"tumor_side must be one of {_TUMOR_SIDES}, got {tumor_side!r}")
    if not isinstance(noise_hu, (int, float, np.number)) or not np.isfinite(noise_hu) or noise_hu < 0:
        raise ValueError(f"noise_hu must be a finite number >= 0, got {noise_hu!r}")
    return tuple(int(n) for n in shape), tuple(float(s) for s in spacing)


def make_phantom(seed: int = 0, *, shape: tuple[int, int, int] = (48, 128, 128),
                 spacing: tuple[float, float, float] = (2.5, 2.5, 5.0), tumor: bool = True, cyst: bool = False,
                 tumor_side: str = "random", noise_hu: float = 12.0) -> Phantom:
    """Generate a contrast-enhanced abdominal CT around the kidneys, with KiTS labels.

    Args:
        seed: Non-negative integer; the same arguments always give identical arrays, and the same
            seed the same anatomy at any shape or spacing.
        shape: (slices, rows, cols) = (k, j, i): at least 8 slices, 64..512 rows and cols.
        spacing: Voxel size in mm along (i, j, k), SimpleITK order. The field of view is
            shape * spacing, centred on the body; anatomy outside it is cropped.
        tumor: Add an enhancing renal tumor (label 2) in one kidney.
        cyst: Add a simple renal cyst (label 3); in the other kidney when there is a tumor.
        tumor_side: The patient's "right" or "left" kidney, or "random" (chosen by the seed).
        noise_hu: Standard deviation of the (slightly correlated) Gaussian noise, in HU.

    Returns:
        A Phantom. A lesion asked for is present whenever its centre lies in the field of view.

    Raises:
        ValueError: If an argument is malformed or out of range.
    """
    shape, spacing = _check_args(seed, shape, spacing, tumor_side, noise_hu)
    anatomy_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
    an = _draw_anatomy(anatomy_rng)
    cv = _Canvas(shape, spacing, an, noise_rng)
    body = cv.inside("body")
    for layer, value in (("body", 20), ("skin", -105), ("wall", 45), ("cavity", -95)):
        np.copyto(cv.hu, np.float32(value), where=cv.inside(layer))
    np.copyto(cv.hu, np.float32(30), where=(cv.hu == -95) & (cv.tex > 1.1))  # mesenteric vessels and nodes
    _paint_bowel(cv, an)
    _paint_solid_organs(cv, an)
    fields = [_kidney_fields(cv, k) for k in an["kidneys"]]
    for hit in filter(None, fields):
        cv.hu[hit[0]][hit[1]["fat"] <= 1] = -95  # perirenal fat
    _paint_retroperitoneum(cv, an)
    for k, hit in zip(an["kidneys"], fields):
        if hit is not None:
            _paint_kidney(cv, an, k, *hit)
    cv.hu += np.where(body, 5 * cv.tex, 0)
    _blur3(cv.hu, (1, 2))
    side = an["tumor"]["side"] if tumor_side == "random" else _TUMOR_SIDES.index(tumor_side)
    if cyst:
        _paint_lesion(cv, an["kidneys"][1 - side if tumor else an["cyst"]["side"]], an["cyst"], LABELS["cyst"])
    if tumor:
        _paint_lesion(cv, an["kidneys"][side], an["tumor"], LABELS["tumor"])
    w = 0.15  # correlate the noise a little in-plane, then restore its standard deviation
    noise = _blur3(noise_rng.standard_normal(shape, dtype=np.float32), (1, 2), w)
    cv.hu += noise * np.float32(noise_hu / (2 * w**2 + (1 - 2 * w) ** 2))
    ct = np.clip(np.rint(cv.hu), -1024, 3071).astype(np.int16)
    origin = tuple(float(a[0]) for a in (cv.x, cv.y, cv.z))
    return Phantom(ct, cv.labels, cv.sides, Geometry(spacing=spacing, origin=origin), body)
