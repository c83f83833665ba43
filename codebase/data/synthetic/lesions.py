"""Diabetic-retinopathy lesions as they look in a colour fundus photograph: planned for a target
grade, then painted into the scene with masks that are exactly the pixels painted.

Sizes are fractions of the field's diameter (FD) or the disc's (DD), from published sizes with a
12-13 mm field and a 1.84 mm disc:
- Microaneurysms: small round dark-red dots, soft-edged and faint (low contrast), about 25-125 um
  across clinically; the ones visible in IDRiD-like photographs are about 10-25 px across at
  4288x2848, where the field is about 3470 px wide: 0.0029-0.0072 FD (about 35-85 um).
- Haemorrhages: dots (0.06-0.12 DD), blots (0.15-0.35 DD, irregular) and flame shapes (splinter
  haemorrhages in the nerve-fibre layer, elongated along the fibres, which run radially from the
  disc; drawn within 3 DD of the disc).
- Hard exudates: yellow-white, waxy, sharp-edged deposits of 0.035-0.11 DD (about 60-200 um) in
  clusters, often as circinate rings (here 40% of clusters) round a leaking area.
- Soft exudates (cotton-wool spots): pale, fluffy, soft-edged, 0.25-0.5 DD, mostly near the
  temporal arcades.
- Neovascular tufts: fine irregular vessel loops on or near the disc (NVD) or along the arcades
  (NVE); a preretinal haemorrhage is a boat shape with a flat upper fluid level.

Each painted lesion changes exactly the pixels of its footprint (its alpha is above zero on the
whole footprint and zero off it), and the mask is that footprint, so masks are exact before the
camera blurs, compresses and adds noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MA_FIELD = (0.0029, 0.0072)       # microaneurysm diameter / field diameter
CIRCINATE_RATE = 0.4


@dataclass
class Lesion:
    kind: str  # MA, HE, PRH, EX, SE, NV
    x: float
    y: float
    radius: float
    aspect: float = 1.0
    angle: float = 0.0
    wobble: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # rows: amplitude, phase
    style: str = ""  # HE: dot, blot or flame


def _wobble(rng, amount: float, harmonics: int = 3) -> np.ndarray:
    amplitudes = amount * rng.uniform(0.3, 1.0, harmonics) / np.arange(1, harmonics + 1)
    return np.stack([amplitudes, rng.uniform(0, 2 * np.pi, harmonics)], axis=1)


class Placer:
    """Rejection sampling of non-overlapping lesion positions inside the field."""

    def __init__(self, rng: np.random.Generator, eye):
        self.rng, self.eye = rng, eye
        self.circles = np.zeros((0, 3))  # x, y, r
        self.gap = 0.004 * eye.radius

    def place(self, radius, near=None, distance=(0.0, 0.0), min_fovea=0.0, on_disc=False):
        eye, rng = self.eye, self.rng
        for _ in range(8):
            n = 64
            theta = rng.uniform(0, 2 * np.pi, n)
            if near is None:
                rho = np.sqrt(rng.uniform(0, 1, n)) * 0.86 * eye.radius
                x, y = eye.cx + rho * np.cos(theta), eye.cy + rho * np.sin(theta)
            else:
                rho = rng.uniform(*distance, n)
                x, y = near[0] + rho * np.cos(theta), near[1] + rho * np.sin(theta)
            ok = eye.inside(x, y, radius + 0.08 * eye.radius)
            disc_gap = np.hypot(x - eye.disc_x, y - eye.disc_y) - eye.disc_ry - radius
            ok &= disc_gap >= (-eye.disc_ry if on_disc else 0.3 * eye.disc_ry)
            ok &= np.hypot(x - eye.fovea_x, y - eye.fovea_y) >= min_fovea
            if len(self.circles):
                gaps = np.hypot(x[:, None] - self.circles[:, 0], y[:, None] - self.circles[:, 1])
                ok &= (gaps - self.circles[:, 2] - radius >= self.gap).all(axis=1)
            hits = np.flatnonzero(ok)
            if len(hits):
                i = hits[0]
                self.circles = np.vstack([self.circles, [x[i], y[i], radius]])
                return float(x[i]), float(y[i])
        return None


def plan(rng: np.random.Generator, eye, arcade: np.ndarray, rg: int, mer: int, se: bool, he: bool = True,
         ma_scale: float = 1.0) -> list[Lesion]:
    """Lesions for a target grade; the grade given is recomputed from what is placed. `arcade`:
    points on the temporal arcades (soft exudates and NVE gather there); ma_scale multiplies the
    microaneurysms' diameters."""
    dd, fd = eye.disc_diameter, 2 * eye.radius
    placer, lesions = Placer(rng, eye), []
    near_arcade = lambda: tuple(arcade[rng.integers(len(arcade))]) if len(arcade) else None  # noqa: E731

    def blot(kind, radius, aspect=1.0, wobble=0.15, angle=None, style="", **where):
        spot = placer.place(radius * max(aspect, 1.0), **where)
        if spot is not None:
            if angle is None:
                angle = rng.uniform(0, np.pi)
            lesions.append(Lesion(kind, *spot, radius, aspect, angle, _wobble(rng, wobble), style))
        return spot

    if rg == 4:
        blot("PRH", dd * rng.uniform(0.35, 0.5), wobble=0.05)
        for _ in range(rng.integers(1, 3)):
            radius = dd * rng.uniform(0.25, 0.45)
            if rng.random() < 0.5:  # NVD: on or next to the disc
                spot = placer.place(radius, on_disc=True, near=(eye.disc_x, eye.disc_y), distance=(0.3 * dd, 1.2 * dd))
            else:  # NVE: along an arcade
                spot = placer.place(radius, near=near_arcade(), distance=(0.0, 0.3 * dd))
            if spot is not None:
                lesions.append(Lesion("NV", *spot, radius))
    if mer:
        clusters = []
        if mer == 2:
            clusters.append(((eye.fovea_x, eye.fovea_y), (0.2 * dd, 0.5 * dd)))
        for _ in range(rng.integers(1 if mer == 1 else 0, 3)):
            clusters.append((None, (0.0, 0.0)))
        for near, distance in clusters:
            ring = rng.random() < CIRCINATE_RATE
            spread = dd * (rng.uniform(0.35, 0.6) if ring else rng.uniform(0.15, 0.3))
            centre = placer.place(spread + 0.06 * dd, near=near, distance=distance,
                                  min_fovea=0.0 if near else 1.3 * dd + spread)
            if centre is None:
                continue
            count = rng.integers(8, 18) if ring else rng.integers(3, 10)
            for _ in range(count):
                theta = rng.uniform(0, 2 * np.pi)
                rho = spread * (rng.uniform(0.8, 1.0) if ring else math.sqrt(rng.random()))
                lesions.append(Lesion("EX", centre[0] + rho * math.cos(theta), centre[1] + rho * math.sin(theta),
                                      dd * rng.uniform(0.018, 0.055), rng.uniform(1.0, 1.5), rng.uniform(0, np.pi),
                                      _wobble(rng, 0.2)))
    haemorrhages = {0: 0, 1: 0, 2: rng.integers(1, 5) if he else 0, 3: rng.integers(12, 21), 4: rng.integers(3, 12)}[rg]
    if rg == 2 and not mer and not haemorrhages:
        haemorrhages = 1
    for _ in range(haemorrhages):
        style = rng.choice(("dot", "blot", "flame"), p=(0.35, 0.4, 0.25))
        if style == "flame":  # along the nerve fibres: radial from the disc, within 3 DD of it
            spot = placer.place(dd * 0.3, near=(eye.disc_x, eye.disc_y), distance=(0.9 * dd, 3.0 * dd))
            if spot is not None:
                angle = math.atan2(spot[1] - eye.disc_y, spot[0] - eye.disc_x)
                lesions.append(Lesion("HE", *spot, dd * rng.uniform(0.06, 0.1), rng.uniform(2.2, 3.2), angle,
                                      _wobble(rng, 0.1), "flame"))
                continue
            style = "blot"
        if style == "dot":
            blot("HE", dd * rng.uniform(0.03, 0.06), aspect=rng.uniform(1.0, 1.15), wobble=0.05, style="dot")
        else:
            blot("HE", dd * rng.uniform(0.08, 0.17), aspect=rng.uniform(1.0, 1.4), wobble=0.3, style="blot")
    for _ in range(rng.integers(1, 4) if se and rg >= 2 else 0):
        blot("SE", dd * rng.uniform(0.12, 0.25), aspect=rng.uniform(1.0, 1.6), wobble=0.35,
             near=near_arcade(), distance=(0.0, 0.6 * dd))
    microaneurysms = {0: 0, 1: rng.integers(3, 9), 2: rng.integers(4, 13), 3: rng.integers(6, 16),
                      4: rng.integers(4, 13)}[rg]
    for _ in range(microaneurysms):  # most near the macula and the arcades, where DR starts
        near = (eye.fovea_x, eye.fovea_y) if rng.random() < 0.6 else None
        blot("MA", ma_scale * fd * rng.uniform(*MA_FIELD) / 2, wobble=0.0, near=near, distance=(0.5 * dd, 2.5 * dd))
    return lesions


def footprint(lesion: Lesion, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inside mask, relative radius (0 centre, 1 edge) and the along-axis coordinate of a lesion."""
    dx, dy = xs - lesion.x, ys - lesion.y
    c, s = math.cos(lesion.angle), math.sin(lesion.angle)
    u = (dx * c + dy * s) / lesion.aspect
    v = -dx * s + dy * c
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    edge = np.full_like(rho, lesion.radius)
    for k, (amplitude, phase) in enumerate(lesion.wobble, start=2):
        edge *= 1.0 + amplitude * np.cos(k * theta + phase)
    relative = rho / np.maximum(edge, 1e-6)
    inside = relative <= 1.0
    if lesion.radius < 0.75:  # below a pixel: keep the pixel under the centre, so no lesion vanishes
        inside |= (np.abs(dx) <= 0.5) & (np.abs(dy) <= 0.5)
    if lesion.kind == "PRH":  # boat shape: flat fluid level on top
        inside &= dy >= -0.35 * lesion.radius
    return inside, np.minimum(relative, 1.0), v


def paint(rng, image: np.ndarray, masks: np.ndarray | None, lesion: Lesion, lesion_index: dict[str, int]) -> None:
    """Blend one lesion into the scene [H, W, 3] and set its mask where it changed the scene."""
    extent = lesion.radius * lesion.aspect * 1.6 + 2
    x0, x1 = max(0, int(lesion.x - extent)), min(image.shape[1], int(lesion.x + extent) + 2)
    y0, y1 = max(0, int(lesion.y - extent)), min(image.shape[0], int(lesion.y + extent) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    inside, relative, across = footprint(lesion, xs, ys)
    patch = image[y0:y1, x0:x1]
    fall = 1.0 - relative ** 2
    if lesion.kind == "MA":  # faint, soft-edged dark-red dot
        target = patch * np.array([0.82, 0.58, 0.66], np.float32)
        alpha = rng.uniform(0.55, 0.85) * (0.2 + 0.8 * fall)
    elif lesion.kind in ("HE", "PRH"):
        target = patch * np.array([0.55, 0.26, 0.33] if lesion.kind == "HE" else [0.42, 0.16, 0.22], np.float32)
        if lesion.style == "flame":  # feathered streaks along the fibres
            streaks = 0.75 + 0.25 * np.cos(across / max(lesion.radius, 1e-3) * 9.0)
            alpha = (0.35 + 0.6 * fall) * streaks
        else:
            alpha = 0.92 - 0.3 * relative ** 4 if lesion.style == "dot" else (0.6 + 0.35 * fall) * rng.uniform(
                0.85, 1.0, inside.shape).astype(np.float32)
    elif lesion.kind == "EX":  # waxy yellow-white, sharp edge, a small specular highlight
        target = patch * np.array([1.35, 2.3, 2.0], np.float32) * rng.uniform(0.92, 1.05)
        alpha = 0.95 - 0.2 * relative ** 6
        target = target * (1.0 + 0.12 * np.exp(-((relative / 0.35) ** 2)))[..., None]
    else:  # SE: pale, fluffy, soft-edged
        target = patch * np.array([1.3, 1.85, 1.9], np.float32)
        fluff = np.clip(1.0 + 0.25 * rng.standard_normal(inside.shape), 0.6, 1.3).astype(np.float32)
        alpha = np.clip((0.12 + 0.7 * fall ** 1.5) * fluff, 0.08, 1.0)
    alpha = np.where(inside, np.maximum(alpha, 0.05), 0.0).astype(np.float32)[..., None]
    image[y0:y1, x0:x1] = patch * (1.0 - alpha) + target * alpha
    if masks is not None:
        code = "HE" if lesion.kind == "PRH" else lesion.kind
        masks[lesion_index[code], y0:y1, x0:x1] |= inside


def labels(lesions: list[Lesion], eye) -> tuple[dict[str, int], list[float]]:
    """Counts by kind and each hard exudate's nearest distance to the fovea in disc diameters."""
    counts = {kind: sum(lesion.kind == kind for lesion in lesions) for kind in ("MA", "HE", "EX", "SE", "NV", "PRH")}
    distances = [(math.hypot(l.x - eye.fovea_x, l.y - eye.fovea_y) - l.radius) / eye.disc_diameter
                 for l in lesions if l.kind == "EX"]
    return counts, distances
