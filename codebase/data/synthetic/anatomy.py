"""Where the disc and the fovea lie, and the fundus behind the vessels: background, macula, disc.

Measured facts the geometry is drawn from (pixels follow from the field's radius):
- Optic disc: vertically oval, mean horizontal diameter 1.76 mm and vertical 1.92 mm (Jonas et al.,
  Invest Ophthalmol Vis Sci 1988), so vertical / horizontal about 1.09; in a 45-50 degree photograph
  the disc is about 1/6 to 1/7 of the field's diameter (a 45-degree field spans about 12-13 mm of
  retina at about 0.29 mm per degree).
- Fovea: 4.76 +- 0.34 mm from the disc centre (disc-fovea distance), so about 2.5 disc diameters;
  about 5.6 +- 3.3 degrees below the disc centre (Rohrschneider, Invest Ophthalmol Vis Sci 2004).
- The macula is darker than the fundus around it (macular pigment, denser RPE), darkest at the
  fovea; its visible extent is about 1.5-2 disc diameters (5.5 mm clinical macula).
- Background: choroidal texture and low-frequency mottling everywhere; in some eyes (about a fifth
  here) a tigroid (tessellated) fundus, the choroidal vessels seen as orange-red bands between
  darker pigmented gaps, most visible towards the periphery.
- The cup is a paler, off-centre (temporal) pit, cup-to-disc ratio about 0.3-0.5 in healthy eyes.

Everything here is drawn in a scene of linear reflectance (float32, roughly 0-1.5); the camera
(`cameras.py`) turns it into a photograph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

DISC_FIELD_RATIO = (1 / 7, 1 / 6)       # disc diameter / field diameter
DISC_MM = (1.84, 0.12, 1.55, 2.15)       # mean disc diameter (mm): mean, sd, clip low, high
DISC_ASPECT = (1.09, 0.03, 1.03, 1.15)   # vertical / horizontal
FOVEA_MM = (4.76, 0.34)                  # disc centre to fovea (mm)
FOVEA_DD_RANGE = (2.1, 2.95)             # clip of the disc-fovea distance in disc diameters
FOVEA_BELOW_DEG = (5.6, 3.3)             # fovea below the disc centre (degrees)
TIGROID_RATE = 0.2
WORK_SIDE = 640                          # smooth fields are computed at most this size, then enlarged


@dataclass
class Eye:
    """Where things are in one image (pixels; x right, y down)."""

    width: int
    height: int
    box: tuple[float, float, float, float]  # the camera's frame inside the image: left, top, right, bottom
    cx: float
    cy: float
    radius: float  # field of view radius
    disc_x: float
    disc_y: float
    disc_rx: float
    disc_ry: float
    fovea_x: float
    fovea_y: float
    temporal: int  # +1: the fovea lies to the right of the disc
    cup: tuple[float, float, float]  # cup centre offset (x, y, in disc radii) and cup-to-disc ratio

    @property
    def disc_diameter(self) -> float:
        return self.disc_rx + self.disc_ry

    def inside(self, x, y, margin=0.0):
        """True where (x, y) lies inside the field and the frame, `margin` pixels from their edges."""
        box = self.box
        return ((np.hypot(np.asarray(x) - self.cx, np.asarray(y) - self.cy) <= self.radius - margin)
                & (np.asarray(y) >= box[1] + margin) & (np.asarray(y) <= box[3] - margin)
                & (np.asarray(x) >= box[0] + margin) & (np.asarray(x) <= box[2] - margin))


def _clipped_normal(rng, mean, sd, low, high) -> float:
    return float(np.clip(rng.normal(mean, sd), low, high))


def make_eye(rng: np.random.Generator, width: int, height: int, box, cx: float, cy: float, radius: float) -> Eye:
    """Disc, fovea and cup for a field of `radius` pixels centred at (cx, cy)."""
    disc_mm = _clipped_normal(rng, *DISC_MM)
    dd = 2 * radius * rng.uniform(*DISC_FIELD_RATIO)
    aspect = _clipped_normal(rng, *DISC_ASPECT)
    rx = dd / (1 + aspect)  # mean diameter rx + ry = dd
    distance = dd * float(np.clip(rng.normal(*FOVEA_MM) / disc_mm, *FOVEA_DD_RANGE))
    below = math.radians(rng.normal(*FOVEA_BELOW_DEG))
    side = 1 if rng.random() < 0.5 else -1  # right or left eye: disc right or left of the fovea
    # Photographs centre between fovea and disc: the fovea sits a little temporal of the centre.
    fovea_x = cx - side * distance * rng.uniform(0.25, 0.45)
    fovea_y = cy + radius * rng.uniform(-0.04, 0.06)
    disc_x = fovea_x + side * distance * math.cos(below)
    disc_y = fovea_y - distance * math.sin(below)
    cup = (-side * rng.uniform(0.05, 0.25), rng.uniform(-0.1, 0.1), rng.uniform(0.3, 0.5))
    return Eye(width, height, tuple(box), cx, cy, radius, disc_x, disc_y, rx, rx * aspect, fovea_x, fovea_y, -side,
               cup)


def smooth_noise(rng, height: int, width: int, cells: tuple[int, int], channels: int = 1) -> np.ndarray:
    """Low-frequency noise, float32 [H, W, C], roughly unit variance (bicubic enlargement of a coarse grid)."""
    layers = []
    for _ in range(channels):
        coarse = rng.standard_normal(cells).astype(np.float32)
        layers.append(np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.BICUBIC)))
    return np.stack(layers, axis=-1)


def enlarge(field: np.ndarray, width: int, height: int) -> np.ndarray:
    """float32 [h, w, C] -> [height, width, C] (bicubic); a no-op at the same size."""
    if field.shape[:2] == (height, width):
        return field
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(field[..., c]), "F").resize(
        (width, height), Image.BICUBIC)) for c in range(field.shape[2])], axis=-1)


def work_size(width: int, height: int) -> tuple[int, int, float]:
    """(w, h, factor): the working grid for smooth fields, factor = w / width."""
    factor = min(1.0, WORK_SIDE / max(width, height))
    return max(8, round(width * factor)), max(8, round(height * factor)), factor


def background(rng, eye: Eye) -> np.ndarray:
    """The fundus behind the vessels, float32 [H, W, 3]: pigment colour, choroidal texture, mottling,
    sometimes a tigroid pattern, a darker macula and fovea, a faint glow round the disc."""
    w, h, f = work_size(eye.width, eye.height)
    ys = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / f
    xs = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / f
    dd = eye.disc_diameter
    r = np.sqrt((xs - eye.cx) ** 2 + (ys - eye.cy) ** 2) / eye.radius
    colour = (np.array([0.80, 0.36, 0.13]) * rng.uniform([0.92, 0.85, 0.8], [1.08, 1.15, 1.2])).astype(np.float32)
    scene = np.ones((h, w, 3), np.float32) * colour
    cells = lambda n: (max(2, round(n * h / max(w, h))), max(2, round(n * w / max(w, h))))  # noqa: E731
    mottling = smooth_noise(rng, h, w, cells(8), 1)
    scene *= 1.0 + 0.06 * mottling * np.array([1.0, 1.2, 1.2], np.float32)
    choroid = smooth_noise(rng, h, w, cells(70), 1) + 0.5 * smooth_noise(rng, h, w, cells(140), 1)
    scene *= 1.0 + 0.025 * choroid * np.array([1.0, 0.6, 0.5], np.float32)
    if rng.random() < TIGROID_RATE:
        bands = np.exp(-(smooth_noise(rng, h, w, cells(22), 1) / 0.3) ** 2)  # zero lines of noise: a network
        strength = rng.uniform(0.10, 0.22) * np.clip(0.35 + r, 0, 1.2)[..., None]
        scene *= 1.0 + strength * (bands - 0.35) * np.array([1.0, 0.55, 0.4], np.float32)
    macula2 = ((xs - eye.fovea_x) ** 2 + (ys - eye.fovea_y) ** 2) / dd ** 2
    depth = rng.uniform(0.18, 0.3)
    macula = depth * np.exp(-macula2 / (2 * 0.75 ** 2)) + rng.uniform(0.08, 0.15) * np.exp(-macula2 / (2 * 0.12 ** 2))
    scene *= 1.0 - macula[..., None] * np.array([0.7, 1.0, 1.0], np.float32)
    disc2 = ((xs - eye.disc_x) ** 2 + (ys - eye.disc_y) ** 2) / dd ** 2
    scene *= 1.0 + 0.12 * np.exp(-disc2 / (2 * 0.9 ** 2))[..., None]
    return enlarge(scene.astype(np.float32), eye.width, eye.height)


def paint_disc(rng, image: np.ndarray, masks: np.ndarray | None, eye: Eye, od_index: int) -> None:
    """A slightly vertical oval, pale yellow-pink with a brighter off-centre cup and a soft rim. Every
    pixel of the ellipse changes and no other (the OD mask is the ellipse)."""
    y0, y1 = int(max(0, eye.disc_y - eye.disc_ry - 2)), int(min(eye.height, eye.disc_y + eye.disc_ry + 3))
    x0, x1 = int(max(0, eye.disc_x - eye.disc_rx - 2)), int(min(eye.width, eye.disc_x + eye.disc_rx + 3))
    if y0 >= y1 or x0 >= x1:
        return
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    u, v = (xs - eye.disc_x) / eye.disc_rx, (ys - eye.disc_y) / eye.disc_ry
    relative = np.sqrt(u * u + v * v)
    inside = relative <= 1.0
    dx, dy, ratio = eye.cup
    cup = np.sqrt((u - dx) ** 2 + (v - dy) ** 2) / ratio
    cupness = np.clip(1.3 - cup, 0, 1) ** 1.5
    rim = np.clip((1.0 - relative) / 0.25, 0, 1)  # soft rim: the last quarter of the radius fades out
    alpha = np.where(inside, 0.25 + 0.75 * rim * rim * (3 - 2 * rim), 0.0)[..., None].astype(np.float32)
    gain = (np.array([1.45, 2.0, 2.3], np.float32) * rng.uniform(0.9, 1.1)
            + cupness[..., None] * np.array([0.2, 0.6, 0.9], np.float32))
    patch = image[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = patch * (1.0 + alpha * (gain - 1.0))
    if masks is not None:
        masks[od_index, y0:y1, x0:x1] = inside
