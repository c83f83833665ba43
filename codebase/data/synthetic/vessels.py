"""The retinal vessel tree, grown from the optic disc, and its drawing.

Measured facts it is drawn from:
- Four arterial and four venous trunks leave the disc: superior and inferior temporal (the
  arcades, arching round the macula about 1.5-2 disc diameters above and below the fovea) and
  superior and inferior nasal (straighter, shorter, thinner).
- Widths at the disc margin: first-order arterioles about 100-120 um, venules about 130-150 um
  (so veins wider and darker); here 0.050-0.060 and 0.068-0.080 disc diameters.
- Branching: widths follow a Murray-type law w0^k = w1^k + w2^k (Murray, PNAS 1926, k = 3 for
  optimal flow); retinal measurements give lower exponents, here k = 2.6 for arteries and 2.0 for
  veins. Branch angles follow Murray's optimum for the daughters' widths, cos(theta1) = (w0^4 +
  w1^4 - w2^4) / (2 w0^2 w1^2), which for retinal bifurcations gives a total angle of about 75-80
  degrees (Zamir et al., J Gen Physiol 1979, measured about 75 degrees in the human retina); the
  wider daughter deviates less.
- About five branching levels are visible in a 45-degree photograph (trunk, side branches, three
  to four bifurcations); thinner vessels are below a photograph's resolution.
- No vessel crosses the foveal avascular zone (diameter about 0.5 mm); visible vessels end short of
  the fovea, here at FAZ_DD disc diameters from its centre.
- Arteries show a central light reflex (a bright stripe about a quarter of the vessel's width).

Vessels are smooth curves (a heading that turns a little at each step), drawn anti-aliased with a
soft-edged cross-section (darker at the centre, as a cylinder of blood absorbs more there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MURRAY_EXPONENT = {"artery": 2.6, "vein": 2.0}
TRUNK_WIDTH_DD = {"artery": (0.050, 0.060), "vein": (0.068, 0.080)}
MAX_LEVEL = 5          # trunk = 0, side branches 1, bifurcations 2..5
FAZ_DD = 0.35          # vessels stop this many disc diameters from the fovea's centre
AVOID_DD = 1.1         # ... and turn away from it within this distance
MIN_WIDTH_DD = 0.006   # thinner vessels (about 11 um) are not grown,
MIN_WIDTH_PX = 0.25    # nor vessels thinner than a quarter pixel (invisible at that image size)
# Darkening per channel where a vessel is fully opaque (veins darker than arteries).
TINT = {"artery": np.array([0.20, 0.42, 0.34], np.float32), "vein": np.array([0.36, 0.62, 0.52], np.float32)}
REFLEX_GAIN = 0.35     # arteries' central reflex: brightening of the vessel at its centre line


@dataclass
class Vessel:
    kind: str            # "artery" or "vein"
    level: int
    width: float         # pixels
    points: np.ndarray   # [n, 2] centre line (x, y)
    parent: int = -1     # index of the vessel it branches from (-1: a trunk leaving the disc)
    arcade: bool = False  # a piece of a temporal arcade's trunk


@dataclass
class Branching:
    kind: str
    parent_width: float
    widths: tuple[float, float]
    angle: float         # degrees between the daughters' starting directions


@dataclass
class VesselTree:
    vessels: list[Vessel] = field(default_factory=list)
    branchings: list[Branching] = field(default_factory=list)
    tufts: list[np.ndarray] = field(default_factory=list)  # closed loops of neovascular tufts

    def arcade_points(self) -> np.ndarray:
        """Centre-line points of the temporal arcades' trunks (where soft exudates gather)."""
        trunks = [v.points for v in self.vessels if v.level == 0 and v.arcade]
        return np.concatenate(trunks) if trunks else np.zeros((0, 2))


def murray_daughters(width: float, ratio: float, exponent: float) -> tuple[float, float]:
    """Widths (w1, w2 = ratio * w1) with width^k = w1^k + w2^k."""
    w1 = width / (1.0 + ratio ** exponent) ** (1.0 / exponent)
    return w1, ratio * w1


def murray_angles(w0: float, w1: float, w2: float) -> tuple[float, float]:
    """Murray's optimal deviations (radians) of the daughters from the parent's direction, for the
    daughters' width ratio: the widths are taken as a cube-law (k = 3) branching with the same ratio,
    since the angle formula is derived for k = 3 (with k = 2 it would give 0 for equal daughters)."""
    ratio = min(w1, w2) / max(w1, w2)
    big, small = murray_daughters(1.0, ratio, 3.0)

    def angle(a, b):
        return math.acos(float(np.clip((1 + a ** 4 - b ** 4) / (2 * a ** 2), -1, 1)))
    wide, narrow = angle(big, small), angle(small, big)
    return (wide, narrow) if w1 >= w2 else (narrow, wide)


class _Grower:
    def __init__(self, rng, eye):
        self.rng, self.eye = rng, eye
        self.tree = VesselTree()
        self.step = max(1.5, 0.03 * eye.radius)
        self.dd = eye.disc_diameter

    def add(self, kind, level, width, points, parent, arcade=False) -> int:
        self.tree.vessels.append(Vessel(kind, level, float(width), np.asarray(points, np.float64), parent, arcade))
        return len(self.tree.vessels) - 1

    def walk(self, start, heading, length, wander=0.10):
        """A smooth centre line from `start`: the heading turns a little each step, away from the fovea,
        and the walk stops at the field's edge or the foveal avascular zone."""
        eye, rng = self.eye, self.rng
        x, y = start
        points, turn = [(x, y)], 0.0
        left, top, right, bottom = eye.box
        limit = eye.radius - 1.0
        for kick in rng.normal(0, wander, max(2, int(length / self.step))).tolist():
            turn = 0.7 * turn + kick
            heading += turn
            fx, fy = eye.fovea_x - x, eye.fovea_y - y
            distance = math.hypot(fx, fy)
            if distance < AVOID_DD * self.dd:
                toward = math.atan2(fy, fx)
                off = math.atan2(math.sin(heading - toward), math.cos(heading - toward))
                if abs(off) < math.pi / 2:  # heading at the fovea: turn away, harder when closer
                    heading += math.copysign(0.5 * (1.0 - distance / (AVOID_DD * self.dd)) + 0.05, off)
            x, y = x + self.step * math.cos(heading), y + self.step * math.sin(heading)
            if (math.hypot(x - eye.fovea_x, y - eye.fovea_y) < FAZ_DD * self.dd
                    or math.hypot(x - eye.cx, y - eye.cy) > limit
                    or not (left + 1 <= x <= right - 1 and top + 1 <= y <= bottom - 1)):
                break
            points.append((x, y))
        return np.asarray(points), heading

    def grow(self, kind, level, width, start, heading, parent):
        """A vessel of level >= 1: a curved walk, then a bifurcation into two thinner daughters."""
        if width < max(MIN_WIDTH_DD * self.dd, MIN_WIDTH_PX):
            return
        rng, radius = self.rng, self.eye.radius
        length = radius * rng.uniform(0.25, 0.45) * 0.72 ** (level - 1)
        points, end_heading = self.walk(start, heading, length)
        if len(points) < 2:
            return
        index = self.add(kind, level, width, points, parent)
        if level >= MAX_LEVEL or (level >= 3 and rng.random() < 0.25):
            return
        self.bifurcate(kind, level + 1, width, points[-1], end_heading, index, rng.uniform(0.6, 1.0))

    def bifurcate(self, kind, level, width, start, heading, parent, ratio, side=None):
        rng = self.rng
        w1, w2 = murray_daughters(width, ratio, MURRAY_EXPONENT[kind])
        t1, t2 = murray_angles(width, w1, w2)
        t1, t2 = t1 + rng.normal(0, 0.04), t2 + rng.normal(0, 0.04)
        sign = side if side is not None else (1 if rng.random() < 0.5 else -1)
        self.tree.branchings.append(Branching(kind, width, (w1, w2), math.degrees(t1 + t2)))
        self.grow(kind, level, w1, start, heading + sign * t1, parent)
        self.grow(kind, level, w2, start, heading - sign * t2, parent)

    def trunk(self, kind, points, width, arcade=False):
        """A trunk along `points`: split into pieces at its side branches (each side branch thins the
        trunk by Murray's law; the trunk keeps its direction, the side branch leaves at the total angle)."""
        rng = self.rng
        if len(points) < 2:
            return
        seg = np.hypot(*np.diff(points, axis=0).T)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        cuts, position = [], self.dd * rng.uniform(0.5, 0.9)
        while position < arc[-1] - self.step:
            cuts.append(int(np.searchsorted(arc, position)))
            position += self.eye.radius * rng.uniform(0.12, 0.22)
        start, parent, exponent = 0, -1, MURRAY_EXPONENT[kind]
        for cut in cuts + [len(points) - 1]:
            if cut <= start:
                continue
            index = self.add(kind, 0, width, points[start:cut + 1], parent, arcade)
            if cut == len(points) - 1:
                break
            ratio = rng.uniform(0.4, 0.75)
            w1, w2 = murray_daughters(width, ratio, exponent)
            t1, t2 = murray_angles(width, w1, w2)
            total = t1 + t2 + rng.normal(0, 0.04)
            direction = points[cut + 1] - points[cut - 1] if cut > 0 else points[1] - points[0]
            heading = math.atan2(direction[1], direction[0])
            side = 1 if rng.random() < 0.5 else -1
            self.tree.branchings.append(Branching(kind, width, (w1, w2), math.degrees(total)))
            self.grow(kind, 1, w2, tuple(points[cut]), heading + side * total, index)
            width, start, parent = w1, cut, index


def _resample(points: np.ndarray, step: float) -> np.ndarray:
    seg = np.hypot(*np.diff(points, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    at = np.arange(0.0, arc[-1], step)
    return np.stack([np.interp(at, arc, points[:, 0]), np.interp(at, arc, points[:, 1])], axis=1)


def _arcade(rng, eye, up: int, kind: str, step: float) -> np.ndarray:
    """A temporal arcade: leaves the disc steeply, arches round the macula `height` disc diameters
    above or below the fovea, then runs on towards the temporal periphery."""
    dd = eye.disc_diameter
    ux, uy = eye.fovea_x - eye.disc_x, eye.fovea_y - eye.disc_y
    distance = math.hypot(ux, uy)
    ux, uy = ux / distance, uy / distance
    vx, vy = -uy * up, ux * up  # perpendicular: up = -1 above (smaller y), +1 below
    if (vy > 0) != (up > 0):
        vx, vy = -vx, -vy
    height = dd * rng.uniform(1.5, 2.0) * (1.08 if kind == "vein" else 0.95)
    x0 = distance * rng.uniform(0.3, 0.42)
    u = np.linspace(0.0, 2.2 * distance, 600)
    v = height * np.tanh(u / x0) * (1 + 0.3 * u / distance) / (math.tanh(distance / x0) * 1.3)
    wave = np.sin(2 * np.pi * u / (distance * rng.uniform(0.6, 1.2)) + rng.uniform(0, 2 * np.pi))
    v += 0.08 * dd * wave * np.tanh(u / x0)
    start = 0.12 * dd * rng.uniform(0.5, 1.5)
    xs = eye.disc_x + u * ux + (v + start) * vx
    ys = eye.disc_y + u * uy + (v + start) * vy
    points = _resample(np.stack([xs, ys], axis=1), step)
    keep = eye.inside(points[:, 0], points[:, 1], 1.0)
    stop = int(np.argmin(keep)) if not keep.all() else len(points)
    return points[:stop]


def grow_tree(rng, eye) -> VesselTree:
    """Four arterial and four venous trunks from the disc, with side branches and bifurcations."""
    grower = _Grower(rng, eye)
    dd = eye.disc_diameter
    nasal = math.atan2(eye.disc_y - eye.fovea_y, eye.disc_x - eye.fovea_x)
    for kind in ("vein", "artery"):
        for up in (-1, 1):
            width = dd * rng.uniform(*TRUNK_WIDTH_DD[kind])
            grower.trunk(kind, _arcade(rng, eye, up, kind, grower.step), width, arcade=True)
            heading = nasal + up * math.radians(rng.uniform(25, 60))
            start = (eye.disc_x + 0.1 * dd * math.cos(heading), eye.disc_y + 0.1 * dd * math.sin(heading))
            points, _ = grower.walk(start, heading, eye.radius * rng.uniform(1.0, 1.6), wander=0.05)
            grower.trunk(kind, points, 0.8 * width)
    return grower.tree


def add_tufts(rng, tree: VesselTree, centres) -> None:
    """Neovascular tufts: fine, irregular closed loops round each (x, y, radius)."""
    for x, y, radius in centres:
        for _ in range(rng.integers(4, 8)):
            theta = np.linspace(0, 2 * np.pi, 24)
            rho = radius * rng.uniform(0.25, 0.6) * (1 + 0.35 * np.sin(3 * theta + rng.uniform(0, 6))
                                                     + 0.2 * np.sin(5 * theta + rng.uniform(0, 6)))
            cx = x + rng.uniform(-0.5, 0.5) * radius
            cy = y + rng.uniform(-0.5, 0.5) * radius
            tree.tufts.append(np.stack([cx + rho * np.cos(theta), cy + rho * np.sin(theta)], axis=1))


def _draw_polyline(layers, points: np.ndarray, width: float, reflex: bool, chunk: int = 6) -> None:
    """Max-composite one centre line of `width` pixels into opacity layers (opacity [H, W], reflex [H, W])."""
    opacity, glint = layers
    height, width_px = opacity.shape
    half = width / 2
    soft = max(1.0, 0.3 * half)  # edge ramp: a pixel, wider for wide vessels
    reach = half + soft + 1.0
    coverage = min(1.0, width)  # vessels thinner than a pixel: fainter, not thinner
    for s in range(0, len(points) - 1, chunk):
        p = points[s:s + chunk + 1]
        x0 = max(0, int(p[:, 0].min() - reach))
        x1 = min(width_px, int(p[:, 0].max() + reach) + 2)
        y0 = max(0, int(p[:, 1].min() - reach))
        y1 = min(height, int(p[:, 1].max() + reach) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1, dtype=np.float32)[None, :, None] + 0.5
        ys = np.arange(y0, y1, dtype=np.float32)[:, None, None] + 0.5
        a, b = p[:-1].astype(np.float32), p[1:].astype(np.float32)
        d = b - a
        length2 = np.maximum((d * d).sum(axis=1), 1e-6)
        t = np.clip(((xs - a[:, 0]) * d[:, 0] + (ys - a[:, 1]) * d[:, 1]) / length2, 0, 1)
        ex, ey = xs - a[:, 0] - t * d[:, 0], ys - a[:, 1] - t * d[:, 1]
        distance2 = (ex * ex + ey * ey).min(axis=2)
        distance = np.sqrt(distance2)
        edge = np.clip((half - distance) / soft + 0.5, 0, 1)  # anti-aliased, soft edge
        core = np.sqrt(np.clip(1 - distance2 / (half + 0.5) ** 2, 0, 1))  # cylinder: darker centre
        value = coverage * edge * (0.55 + 0.45 * core)
        np.maximum(opacity[y0:y1, x0:x1], value, out=opacity[y0:y1, x0:x1])
        if reflex and width >= 3:
            np.maximum(glint[y0:y1, x0:x1], np.exp(-distance2 / (0.13 * width) ** 2), out=glint[y0:y1, x0:x1])


def _chaikin(points: np.ndarray) -> np.ndarray:
    """One round of corner cutting: a smoother curve through the same ends."""
    q = 0.75 * points[:-1] + 0.25 * points[1:]
    r = 0.25 * points[:-1] + 0.75 * points[1:]
    return np.concatenate([points[:1], np.stack([q, r], axis=1).reshape(-1, 2), points[-1:]])


def draw(image: np.ndarray, tree: VesselTree, rng, tuft_width: float) -> dict[str, np.ndarray]:
    """Darken `image` [H, W, 3] (in place) along the tree (tufts `tuft_width` pixels wide); returns the
    opacity layers by kind."""
    height, width = image.shape[:2]
    layers = {kind: (np.zeros((height, width), np.float32), np.zeros((height, width), np.float32))
              for kind in ("artery", "vein")}
    for vessel in tree.vessels:
        if vessel.width >= MIN_WIDTH_PX and len(vessel.points) >= 2:
            points = vessel.points
            if len(points) > 2 and np.hypot(*(points[1] - points[0])) > 8:  # long steps: cut the corners
                points = _chaikin(points)
            reflex = vessel.kind == "artery" and vessel.level <= 1  # only wide arteries show a reflex
            _draw_polyline(layers[vessel.kind], points, vessel.width, reflex, chunk=8)
    for loop in tree.tufts:
        _draw_polyline(layers["vein"], loop, tuft_width, False, chunk=8)
    for kind in ("vein", "artery"):
        opacity, glint = layers[kind]
        tint = TINT[kind] * rng.uniform(0.9, 1.1)
        image *= 1.0 - opacity[..., None] * tint
        if kind == "artery":
            image *= 1.0 + REFLEX_GAIN * (glint * opacity)[..., None]
    return {kind: layers[kind][0] for kind in layers}
