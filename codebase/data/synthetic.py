"""Synthetic IDRiD: fundus-like images with drawn lesions, exact masks and rule-based grades.

`python -m codebase.data.synthetic OUT [--seed S] [--size WxH] [--seg-train N] [--seg-test N]
[--grade-train N] [--grade-test N]` writes the IDRiD tree (names from `codebase.data.idrid`) with
IDRiD's file quirks: JPEG images, TIFF masks in several pixel formats (1-bit, 8-bit grey with 255
or other non-zero values, palette, RGB, and the last test image's EX mask as RGBA with the mask in
alpha), no mask file for an absent lesion, grading CSVs with a trailing-space header, empty unnamed
columns and blank trailing lines. Same seed, same bytes.

Grades follow what is drawn (`retinopathy_grade`, `macular_edema_risk`):
  RG 4  neovascular tufts and a preretinal haemorrhage (PDR)
  RG 3  at least SEVERE_HAEMORRHAGES haemorrhage blots
  RG 2  any haemorrhage, hard exudate or soft exudate (with microaneurysms)
  RG 1  microaneurysms only
  RG 0  no lesion
  MER 2 a hard exudate within one optic-disc diameter of the macula centre; 1 hard exudates, all
        further away; 0 no hard exudate.
Lesion sizes scale with the image; at the default size a microaneurysm is about 4-5 px across, which
is 30-40 px at IDRiD's 4288x2848, the large end of real microaneurysms (`--ma-scale` draws them
smaller: 0.4 gives 12-16 px at 4288x2848).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from codebase.config import MAX_IMAGE_SIDE
from codebase.data import idrid
from codebase.errors import run_tool

DEFAULT_SIZE = (576, 384)  # (W, H); IDRiD itself is 4288 x 2848
DEFAULT_COUNTS = {"seg_train": 30, "seg_test": 12, "grade_train": 160, "grade_test": 60}
SEVERE_HAEMORRHAGES = 10

# Grading-set class mix (skewed like IDRiD: RG 0 and 2 dominate) and MER mix when RG >= 2.
RG_MIX = (0.30, 0.10, 0.28, 0.18, 0.14)
MER_MIX_WITH_LESIONS = (0.15, 0.30, 0.55)
# Segmentation images all show DR lesions (as in IDRiD): RG 2-4, always hard exudates.
SEG_RG_MIX = (0.0, 0.0, 0.45, 0.30, 0.25)
SEG_MER_MIX = (0.0, 0.35, 0.65)

_STREAMS = {("segmentation", "train"): 0, ("segmentation", "test"): 1, ("grading", "train"): 2, ("grading", "test"): 3}
_MASK_FORMATS = ("1bit", "grey255", "grey_odd", "palette", "rgb")
_ODD_GREY_VALUES = (1, 29, 76, 150, 201)
_JPEG_QUALITY = 92


# ----------------------------------------------------------------------------- grading rules
def retinopathy_grade(counts: dict[str, int]) -> int:
    """RG from the lesions drawn: counts of MA, HE (blots), EX, SE, NV (tufts), PRH (preretinal)."""
    if counts.get("NV", 0) or counts.get("PRH", 0):
        return 4
    if counts.get("HE", 0) >= SEVERE_HAEMORRHAGES:
        return 3
    if counts.get("HE", 0) or counts.get("EX", 0) or counts.get("SE", 0):
        return 2
    return 1 if counts.get("MA", 0) else 0


def macular_edema_risk(exudate_distances: list[float]) -> int:
    """MER from each hard exudate's nearest distance to the macula centre, in disc diameters."""
    if not exudate_distances:
        return 0
    return 2 if min(exudate_distances) <= 1.0 else 1


# ----------------------------------------------------------------------------- geometry
@dataclass
class _Eye:
    """Where things are in one image (pixels; x right, y down)."""

    width: int
    height: int
    cx: float
    cy: float
    radius: float  # fundus field radius
    scale: float  # 1.0 at the default size
    disc_x: float
    disc_y: float
    disc_rx: float
    disc_ry: float
    macula_x: float
    macula_y: float
    temporal: int  # +1: the macula lies to the right of the disc

    @property
    def disc_diameter(self) -> float:
        return self.disc_rx + self.disc_ry


def _make_eye(rng: np.random.Generator, width: int, height: int) -> _Eye:
    radius = min(0.56 * height, 0.48 * width)
    scale = radius / (0.56 * DEFAULT_SIZE[1])
    cx = width / 2 + rng.uniform(-0.01, 0.01) * height
    cy = height / 2 + rng.uniform(-0.01, 0.01) * height
    side = 1 if rng.random() < 0.5 else -1  # left or right eye: disc right or left of centre
    disc_r = radius * rng.uniform(0.115, 0.13)
    disc_x = cx + side * radius * rng.uniform(0.44, 0.52)
    disc_y = cy + radius * rng.uniform(-0.06, 0.06)
    dd = 2 * disc_r
    return _Eye(
        width, height, cx, cy, radius, scale,
        disc_x, disc_y, disc_r, disc_r * rng.uniform(1.03, 1.12),
        disc_x - side * dd * rng.uniform(2.3, 2.6), disc_y + dd * rng.uniform(0.1, 0.35),
        -side,
    )


# ----------------------------------------------------------------------------- lesion plans
@dataclass
class _Lesion:
    kind: str  # MA, HE, PRH, EX, SE, NV
    x: float
    y: float
    radius: float
    aspect: float = 1.0
    angle: float = 0.0
    wobble: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # rows: amplitude, phase


def _wobble(rng, amount: float, harmonics: int = 3) -> np.ndarray:
    amplitudes = amount * rng.uniform(0.3, 1.0, harmonics) / np.arange(1, harmonics + 1)
    return np.stack([amplitudes, rng.uniform(0, 2 * np.pi, harmonics)], axis=1)


class _Placer:
    """Rejection sampling of non-overlapping lesion positions inside the fundus field."""

    def __init__(self, rng: np.random.Generator, eye: _Eye):
        self.rng, self.eye = rng, eye
        self.circles = np.zeros((0, 3))  # x, y, r

    def place(self, radius, near=None, distance=(0.0, 0.0), min_macula=0.0, on_disc=False):
        eye, rng = self.eye, self.rng
        for _ in range(8):
            n = 64
            theta = rng.uniform(0, 2 * np.pi, n)
            if near is None:
                rho = np.sqrt(rng.uniform(0, 1, n)) * (0.86 * eye.radius - radius)
                x, y = eye.cx + rho * np.cos(theta), eye.cy + rho * np.sin(theta)
            else:
                rho = rng.uniform(*distance, n)
                x, y = near[0] + rho * np.cos(theta), near[1] + rho * np.sin(theta)
            ok = np.hypot(x - eye.cx, y - eye.cy) <= 0.88 * eye.radius - radius
            disc_gap = np.hypot(x - eye.disc_x, y - eye.disc_y) - eye.disc_ry - radius
            ok &= disc_gap >= (-eye.disc_ry if on_disc else 0.3 * eye.disc_ry)
            ok &= np.hypot(x - eye.macula_x, y - eye.macula_y) >= min_macula
            if len(self.circles):
                gaps = np.hypot(x[:, None] - self.circles[:, 0], y[:, None] - self.circles[:, 1])
                ok &= (gaps - self.circles[:, 2] - radius >= 1.5 * eye.scale).all(axis=1)
            hits = np.flatnonzero(ok)
            if len(hits):
                i = hits[0]
                self.circles = np.vstack([self.circles, [x[i], y[i], radius]])
                return float(x[i]), float(y[i])
        return None


def _plan_lesions(rng: np.random.Generator, eye: _Eye, rg: int, mer: int, se: bool, he: bool = True,
                  ma_scale: float = 1.0) -> list[_Lesion]:
    """Lesions for a target grade; the grade actually given is recomputed from what is placed.
    ma_scale multiplies the microaneurysms' radii."""
    s, dd = eye.scale, eye.disc_diameter
    placer, lesions = _Placer(rng, eye), []

    def blot(kind, radius, aspect=1.0, wobble=0.15, **where):
        spot = placer.place(radius * max(aspect, 1.0), **where)
        if spot is not None:
            lesions.append(_Lesion(kind, *spot, radius, aspect, rng.uniform(0, np.pi), _wobble(rng, wobble)))
        return spot

    if rg == 4:
        blot("PRH", s * rng.uniform(20, 28), aspect=1.0, wobble=0.05)
        for _ in range(rng.integers(1, 3)):
            spot = placer.place(s * 16, on_disc=True, near=(eye.disc_x, eye.disc_y), distance=(0.5 * dd, 2.0 * dd))
            if spot is not None:
                lesions.append(_Lesion("NV", *spot, s * 16))
    if mer:
        clusters = []
        if mer == 2:
            clusters.append(((eye.macula_x, eye.macula_y), (0.25 * dd, 0.6 * dd)))
        for _ in range(rng.integers(1 if mer == 1 else 0, 3)):
            clusters.append((None, (0.0, 0.0)))
        for near, distance in clusters:
            spread = dd * rng.uniform(0.15, 0.3)
            centre = placer.place(spread + 3.6 * s, near=near, distance=distance,
                                  min_macula=0.0 if near else 1.5 * dd)
            if centre is None:
                continue
            for _ in range(rng.integers(3, 10)):
                rho, theta = spread * math.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
                lesions.append(_Lesion("EX", centre[0] + rho * math.cos(theta), centre[1] + rho * math.sin(theta),
                                       s * rng.uniform(1.8, 3.6), rng.uniform(1.0, 1.4), rng.uniform(0, np.pi),
                                       _wobble(rng, 0.2)))
    haemorrhages = {0: 0, 1: 0, 2: rng.integers(1, 5) if he else 0, 3: rng.integers(12, 21), 4: rng.integers(3, 12)}[rg]
    if rg == 2 and not mer and not haemorrhages:
        haemorrhages = 1
    for _ in range(haemorrhages):
        if rng.random() < 0.25:  # flame-shaped
            blot("HE", s * rng.uniform(4.0, 6.0), aspect=rng.uniform(1.8, 2.6), wobble=0.1)
        else:
            blot("HE", s * rng.uniform(4.5, 9.0), aspect=rng.uniform(1.0, 1.4), wobble=0.25)
    for _ in range(rng.integers(1, 4) if se and rg >= 2 else 0):
        blot("SE", s * rng.uniform(7.0, 11.0), aspect=rng.uniform(1.0, 1.6), wobble=0.35)
    microaneurysms = {0: 0, 1: rng.integers(3, 9), 2: rng.integers(4, 13), 3: rng.integers(6, 16), 4: rng.integers(4, 13)}[rg]
    for _ in range(microaneurysms):
        blot("MA", ma_scale * s * rng.uniform(1.8, 2.8), wobble=0.0)
    return lesions


def _labels(lesions: list[_Lesion], eye: _Eye) -> tuple[int, int]:
    counts = {kind: sum(lesion.kind == kind for lesion in lesions) for kind in ("MA", "HE", "EX", "SE", "NV", "PRH")}
    distances = [
        (math.hypot(l.x - eye.macula_x, l.y - eye.macula_y) - l.radius) / eye.disc_diameter
        for l in lesions if l.kind == "EX"
    ]
    return retinopathy_grade(counts), macular_edema_risk(distances)


# ----------------------------------------------------------------------------- drawing
def _smooth_noise(rng, height: int, width: int, cells: tuple[int, int], channels: int) -> np.ndarray:
    """Low-frequency noise, float32 [H, W, C], roughly unit variance."""
    layers = []
    for _ in range(channels):
        coarse = rng.standard_normal(cells).astype(np.float32)
        layers.append(np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.BICUBIC)))
    return np.stack(layers, axis=-1)


def _background(rng, eye: _Eye) -> tuple[np.ndarray, np.ndarray]:
    """Orange-red field with vignetting, darker macula, glow round the disc: (float32 [H,W,3], field [H,W])."""
    h, w = eye.height, eye.width
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    r = np.sqrt((xs - eye.cx) ** 2 + (ys - eye.cy) ** 2) / eye.radius
    fundus = np.clip((1.0 - r) * eye.radius / (2.0 * eye.scale), 0.0, 1.0)
    dd = eye.disc_diameter
    macula2 = (xs - eye.macula_x) ** 2 + (ys - eye.macula_y) ** 2
    disc2 = (xs - eye.disc_x) ** 2 + (ys - eye.disc_y) ** 2
    shade = (1.0 - 0.5 * np.minimum(r, 1.0) ** 3)
    shade *= 1.0 - 0.28 * np.exp(-macula2 / (2 * (0.8 * dd) ** 2)) - 0.12 * np.exp(-macula2 / (2 * (0.12 * dd) ** 2))
    shade *= 1.0 + 0.2 * np.exp(-disc2 / (2 * (1.2 * dd) ** 2))
    colour = np.array([rng.uniform(190, 228), rng.uniform(72, 102), rng.uniform(26, 44)], np.float32)
    colour *= rng.uniform(0.85, 1.08)
    texture = 1.0 + 0.05 * _smooth_noise(rng, h, w, (7, 10), 3)
    image = colour * texture * (shade * fundus)[..., None]
    return image, fundus


def _footprint(lesion: _Lesion, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inside mask and relative radius (0 centre, 1 edge) of a blob over a pixel grid."""
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
    if lesion.kind == "PRH":  # boat shape: flat fluid level on top
        inside &= dy >= -0.35 * lesion.radius
    return inside, relative


def _paint_lesion(rng, image: np.ndarray, masks: np.ndarray | None, lesion: _Lesion) -> None:
    """Blend one lesion into image [H,W,3] (float) and set its mask pixels exactly where it changed."""
    extent = lesion.radius * lesion.aspect * 1.6 + 2
    x0, x1 = max(0, int(lesion.x - extent)), min(image.shape[1], int(lesion.x + extent) + 2)
    y0, y1 = max(0, int(lesion.y - extent)), min(image.shape[0], int(lesion.y + extent) + 2)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    inside, relative = _footprint(lesion, xs, ys)
    patch = image[y0:y1, x0:x1]
    if lesion.kind in ("MA", "HE", "PRH"):
        tint = {"MA": (0.42, 0.16, 0.2), "HE": (0.5, 0.17, 0.2), "PRH": (0.38, 0.1, 0.12)}[lesion.kind]
        target = patch * np.asarray(tint, np.float32)
        alpha = 0.95 - 0.2 * relative**2
    elif lesion.kind == "EX":
        target = np.asarray((252, 228, 96), np.float32) * rng.uniform(0.9, 1.0)
        alpha = 0.97 - 0.3 * relative**2
    else:  # SE: pale, fluffy, soft inside but still visible up to its edge
        target = np.asarray((236, 222, 196), np.float32)
        fluff = rng.uniform(0.8, 1.0, inside.shape).astype(np.float32)
        alpha = (0.45 + 0.35 * (1.0 - relative**2)) * fluff
    alpha = np.where(inside, alpha, 0.0).astype(np.float32)[..., None]
    image[y0:y1, x0:x1] = patch * (1.0 - alpha) + target * alpha
    if masks is not None:
        code = "HE" if lesion.kind == "PRH" else lesion.kind
        masks[idrid.LESIONS.index(code), y0:y1, x0:x1] |= inside


def _paint_disc(image: np.ndarray, masks: np.ndarray | None, eye: _Eye) -> None:
    """Bright yellowish disc with a paler cup; its mask is the disc ellipse."""
    y0, y1 = int(max(0, eye.disc_y - eye.disc_ry - 2)), int(min(eye.height, eye.disc_y + eye.disc_ry + 3))
    x0, x1 = int(max(0, eye.disc_x - eye.disc_rx - 2)), int(min(eye.width, eye.disc_x + eye.disc_rx + 3))
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    relative = np.sqrt(((xs - eye.disc_x) / eye.disc_rx) ** 2 + ((ys - eye.disc_y) / eye.disc_ry) ** 2)
    inside = relative <= 1.0
    cup = np.sqrt(((xs - eye.disc_x - 0.15 * eye.temporal * eye.disc_rx) / (0.4 * eye.disc_rx)) ** 2
                  + ((ys - eye.disc_y) / (0.45 * eye.disc_ry)) ** 2)
    colour = np.asarray((250, 200, 140), np.float32) + np.asarray((5, 40, 60), np.float32) * np.clip(1 - cup, 0, 1)[..., None]
    alpha = np.where(inside, 0.8 + 0.15 * (1 - relative**2), 0.0)[..., None].astype(np.float32)
    patch = image[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = patch * (1 - alpha) + colour * alpha
    if masks is not None:
        masks[idrid.LESIONS.index("OD"), y0:y1, x0:x1] = inside


def _walk(rng, eye: _Eye, start, angle, steps, step, target=None, pull=0.0, wander=0.12):
    """A vessel centre line: random walk, optionally turning towards a target direction."""
    x, y = start
    points = [(x, y)]
    for _ in range(steps):
        if target is not None:
            angle += pull * math.atan2(math.sin(target - angle), math.cos(target - angle))
        angle += rng.normal(0, wander)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        if math.hypot(x - eye.cx, y - eye.cy) > 0.99 * eye.radius:
            break
        points.append((x, y))
    return points, angle


def _vessels(rng, eye: _Eye, lesions: list[_Lesion]) -> Image.Image:
    """Vessel darkness layer ('L'): arcades and nasal vessels from the disc, branches, NV tufts."""
    layer = Image.new("L", (eye.width, eye.height), 0)
    draw = ImageDraw.Draw(layer)
    s, step = eye.scale, 0.05 * eye.radius
    temporal_angle = 0.0 if eye.temporal > 0 else math.pi

    def vessel(start, angle, steps, width, darkness, target=None, pull=0.0, depth=0):
        points, _ = _walk(rng, eye, start, angle, steps, step, target, pull)
        if len(points) > 1:
            draw.line(points, fill=darkness, width=max(1, round(width)), joint="curve")
        if depth < 2:
            for i in range(2, len(points) - 1):
                if rng.random() < 0.14:
                    direction = math.atan2(points[i + 1][1] - points[i][1], points[i + 1][0] - points[i][0])
                    direction += rng.choice((-1, 1)) * rng.uniform(0.5, 1.0)
                    vessel(points[i], direction, max(3, steps // 2), width * 0.62, darkness, depth=depth + 1)

    for up in (-1, 1):
        for darkness, width, offset in ((235, 4.6 * s, 0.0), (165, 3.4 * s, 0.18)):
            start = (eye.disc_x, eye.disc_y + up * eye.disc_ry * 0.3)
            temporal = temporal_angle + eye.temporal * up * (1.15 + offset)
            target = temporal_angle - eye.temporal * up * 0.45
            vessel(start, temporal, 22, width, darkness, target=target, pull=0.09)
            nasal = temporal_angle + math.pi - eye.temporal * up * (0.7 + offset)
            vessel(start, nasal, 12, width * 0.8, darkness)
    for tuft in (l for l in lesions if l.kind == "NV"):
        for _ in range(9):
            start = (tuft.x + rng.uniform(-0.5, 0.5) * tuft.radius, tuft.y + rng.uniform(-0.5, 0.5) * tuft.radius)
            points, _ = _walk(rng, eye, start, rng.uniform(0, 2 * np.pi), 10, 0.18 * tuft.radius, wander=0.8)
            draw.line(points, fill=255, width=max(1, round(1.4 * s)), joint="curve")
    return layer.filter(ImageFilter.GaussianBlur(0.6 * s))


def render(rng: np.random.Generator, size: tuple[int, int], rg: int, mer: int, soft_exudates: bool,
           haemorrhages: bool = True, with_masks: bool = True, ma_scale: float = 1.0):
    """One synthetic fundus image: (uint8 [H,W,3], masks bool [5,H,W] in LESIONS order or None, rg, mer).

    rg/mer are targets; the returned grades are recomputed from what was drawn by the rules above.
    """
    width, height = size
    eye = _make_eye(rng, width, height)
    lesions = _plan_lesions(rng, eye, rg, mer, soft_exudates, haemorrhages, ma_scale)
    image, fundus = _background(rng, eye)
    masks = np.zeros((len(idrid.LESIONS), height, width), bool) if with_masks else None
    _paint_disc(image, masks, eye)
    darkness = np.asarray(_vessels(rng, eye, lesions), np.float32) * (fundus / 255.0)
    image *= 1.0 - darkness[..., None] * np.asarray((0.38, 0.62, 0.6), np.float32)
    for lesion in lesions:
        if lesion.kind != "NV":
            _paint_lesion(rng, image, masks, lesion)
    image += rng.standard_normal(image.shape, dtype=np.float32) * (1.6 * fundus[..., None] + 0.6)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return (image, masks, *_labels(lesions, eye))


# ----------------------------------------------------------------------------- writing
def _quota(n: int, mix, rng: np.random.Generator) -> np.ndarray:
    """n labels following `mix` as closely as whole numbers allow (largest remainder), shuffled."""
    mix = np.asarray(mix, float) / np.sum(mix)
    counts = np.floor(mix * n).astype(int)
    remainder = mix * n - counts
    counts[np.argsort(-remainder, kind="stable")[: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(mix)), counts))


def _mask_image(mask: np.ndarray, fmt: str, number: int) -> Image.Image:
    if fmt == "1bit":
        return Image.fromarray(mask)
    if fmt == "grey255":
        return Image.fromarray(mask.astype(np.uint8) * 255)
    if fmt == "grey_odd":
        return Image.fromarray(mask.astype(np.uint8) * _ODD_GREY_VALUES[number % len(_ODD_GREY_VALUES)])
    if fmt == "palette":
        image = Image.fromarray(mask.astype(np.uint8), "P")
        image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
        return image
    rgb = np.zeros(mask.shape + (3,), np.uint8)
    if fmt == "rgb":
        rgb[mask] = (255, 0, 0)
        return Image.fromarray(rgb)
    # rgba (like IDRiD_81_EX.tif): the mask lives in alpha; the colour channels say nothing.
    rgb[:] = (255, 0, 0)
    return Image.fromarray(np.dstack([rgb, mask.astype(np.uint8) * 255]), "RGBA")


def _write_segmentation(root: Path, split: str, first: int, count: int, seed: int, size, last_is_rgba: bool,
                        ma_scale: float = 1.0):
    rng = np.random.default_rng([seed, _STREAMS["segmentation", split]])
    grades = _quota(count, SEG_RG_MIX, rng)
    risks = _quota(count, SEG_MER_MIX, rng)
    soft = _quota(count, (0.5, 0.5), rng)
    haemorrhage_free = _quota(count, (0.85, 0.15), rng)
    for folder in [idrid.segmentation_image_dir(root, split)] + [
        idrid.segmentation_mask_dir(root, split, lesion) for lesion in idrid.LESIONS
    ]:
        folder.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(count), desc=f"synthetic segmentation {split}", leave=False, disable=not count):
        number = first + i
        name = idrid.segmentation_image_name(number)
        image_rng = np.random.default_rng([seed, _STREAMS["segmentation", split], number])
        image, masks, _, _ = render(image_rng, size, int(grades[i]), int(risks[i]), bool(soft[i]),
                                    haemorrhages=not (haemorrhage_free[i] and grades[i] == 2), ma_scale=ma_scale)
        Image.fromarray(image).save(idrid.segmentation_image_path(root, split, name), quality=_JPEG_QUALITY)
        for k, lesion in enumerate(idrid.LESIONS):
            if not masks[k].any():
                continue  # absent lesion: no file, as in IDRiD
            fmt = _MASK_FORMATS[(number + k) % len(_MASK_FORMATS)]
            if last_is_rgba and i == count - 1 and lesion == "EX":
                fmt = "rgba"
            compression = "group4" if fmt == "1bit" else "tiff_lzw"
            _mask_image(masks[k], fmt, number).save(
                idrid.segmentation_mask_path(root, split, name, lesion), compression=compression)


def _write_grading(root: Path, split: str, count: int, seed: int, size,
                   ma_scale: float = 1.0) -> list[tuple[str, int, int]]:
    rng = np.random.default_rng([seed, _STREAMS["grading", split]])
    grades = _quota(count, RG_MIX, rng)
    risks = np.zeros(count, int)
    lesioned = np.flatnonzero(grades >= 2)
    risks[lesioned] = _quota(len(lesioned), MER_MIX_WITH_LESIONS, rng)
    soft = rng.random(count) < 0.4
    idrid.grading_image_dir(root, split).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(count), desc=f"synthetic grading {split}", leave=False, disable=not count):
        number = i + 1
        name = idrid.grading_image_name(number)
        image_rng = np.random.default_rng([seed, _STREAMS["grading", split], number])
        image, _, rg, mer = render(image_rng, size, int(grades[i]), int(risks[i]), bool(soft[i]), with_masks=False,
                                   ma_scale=ma_scale)
        Image.fromarray(image).save(idrid.grading_image_path(root, split, name), quality=_JPEG_QUALITY)
        rows.append((name, rg, mer))
    empty = "," * 8  # IDRiD's CSVs carry empty unnamed columns and blank trailing lines
    lines = [",".join(idrid.CSV_HEADER) + empty] + [f"{n},{rg},{mer}{empty}" for n, rg, mer in rows]
    lines += ["," * 10, "," * 10, "", ""]
    csv_path = idrid.grading_labels_path(root, split)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as file:
        file.write("\r\n".join(lines))
    return rows


def generate(out, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE, seg_train: int = DEFAULT_COUNTS["seg_train"],
             seg_test: int = DEFAULT_COUNTS["seg_test"], grade_train: int = DEFAULT_COUNTS["grade_train"],
             grade_test: int = DEFAULT_COUNTS["grade_test"], ma_scale: float = 1.0) -> Path:
    """Write a synthetic IDRiD tree under `out` (size is (W, H)); returns `out`. `ma_scale` multiplies
    the microaneurysms' radii (recorded in synthetic.json where it is not 1).

    Built in a temporary folder inside `out` and moved into place, so an interrupted run leaves no
    half-written tree. Refuses to write over an existing tree.
    """
    out = Path(out)
    width, height = (int(v) for v in size)
    if width < 32 or height < 32:
        raise ValueError(f"size {width}x{height}: expected at least 32x32 pixels")
    if not 0 < ma_scale <= 4:
        raise ValueError(f"ma_scale {ma_scale}: expected a number in (0, 4]")
    for top in (idrid.SEGMENTATION_DIR, idrid.GRADING_DIR):
        if (out / top).exists():
            raise idrid.IDRiDError(f"{out / top}: already exists; remove it or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=out))
    try:
        _write_segmentation(staging, "train", 1, seg_train, seed, (width, height), False, ma_scale)
        _write_segmentation(staging, "test", seg_train + 1, seg_test, seed, (width, height), True, ma_scale)
        for split, count in (("train", grade_train), ("test", grade_test)):
            _write_grading(staging, split, count, seed, (width, height), ma_scale)
        info = {"generator": "codebase.data.synthetic", "seed": seed, "size": [width, height], "seg_train": seg_train,
                "seg_test": seg_test, "grade_train": grade_train, "grade_test": grade_test}
        if ma_scale != 1.0:
            info["ma_scale"] = ma_scale
        (staging / "synthetic.json").write_text(json.dumps(info, indent=1) + "\n")
        for entry in (idrid.SEGMENTATION_DIR, idrid.GRADING_DIR, "synthetic.json"):
            os.replace(staging / entry, out / entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def ensure_dataset(root, **kwargs) -> Path:
    """Return `root`, first generating a synthetic tree there (kwargs as `generate`) if none exists."""
    root = Path(root)
    if idrid.tree_present(root):
        return root
    try:
        return generate(root, **kwargs)
    except (idrid.IDRiDError, OSError):
        if idrid.tree_present(root):  # another process generated it meanwhile
            return root
        raise


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 576x384") from None
    if max(width, height) > MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected at most {MAX_IMAGE_SIDE} pixels a side")
    return width, height


def count(text: str) -> int:
    """A number of images, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of images, 0 or more")
    return value


def main(argv=None) -> int:
    """The tool's entry point: bad input (a size, an unwritable or full folder) ends in one `error:` line
    (codebase.errors.run_tool); a Ctrl-C in one line too."""
    return run_tool(lambda: write_tree(argv))


def write_tree(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codebase.data.synthetic",
                                     description="Write a synthetic dataset in IDRiD's layout.")
    parser.add_argument("out", help="output data root, e.g. data/synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE,
                        help="image size WxH (default %(default)s; IDRiD's own is 4288x2848)")
    for key, default in DEFAULT_COUNTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=count, default=default, dest=key,
                            help=f"number of images (default {default})")
    parser.add_argument("--ma-scale", type=float, default=1.0,
                        help="multiply the microaneurysms' radii (default 1; 0.4 is closer to real ones)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        generate(args.out, args.seed, args.size, args.seg_train, args.seg_test, args.grade_train, args.grade_test,
                 args.ma_scale)
    except (idrid.IDRiDError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = args.seg_train + args.seg_test + args.grade_train + args.grade_test
    print(f"wrote {total} synthetic images ({args.size[0]}x{args.size[1]}) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    for split in idrid.SPLITS:
        records = idrid.grading_records(args.out, split)
        rg = [sum(r.retinopathy_grade == g for r in records) for g in range(idrid.NUM_RG_CLASSES)]
        mer = [sum(r.macular_edema_risk == g for r in records) for g in range(idrid.NUM_MER_CLASSES)]
        print(f"  grading {split}: RG 0..4 {rg}, MER 0..2 {mer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
