"""Camera profiles: how a fundus camera turns the scene into a photograph.

A profile sets the field of view's shape (a full circle; a circle cut at top and bottom, as in
IDRiD's 4288x2848 frames; a circle with an orientation notch), the native frame's aspect ratio and
resolution, the colour response, vignetting and uneven illumination, defocus blur, sensor noise,
JPEG quality, and acquisition defects with their rates.

Colour response: each image's channel gains make the mean RGB over the camera's whole frame (field
and dark surround) match the published normalisation statistics of the dataset the profile is
modelled on (per-image jitter about it, so a tree's mean stays near the target):
  IDRiD                          116.5 / 56.4 / 16.3   (blue/red 0.14, green/red 0.48)
  DDR                             81.2 / 50.6 / 21.2   (0.26, 0.62)
  EyePACS, cropped to 512 px     108.6 / 75.8 / 54.3   (0.50, 0.70)
The fourth profile ("notched") is not modelled on a published dataset and its target is not a
measured figure: its colour inside the field is chosen between IDRiD's and DDR's (their means over
the field, the whole-image means over the field's share of the frame: about 169/82/24 for IDRiD,
whose field covers about 0.69 of its frame, and 156/97/41 for DDR-like 4:3 frames, 0.52), about
160/88/32, which over its field's share of a 3:2 frame (0.44) is 71/39/14.

Acquisition defects follow the degradation types of EyeQ (Fu et al., "Evaluation of retinal image
quality assessment networks in different color-spaces", MICCAI 2019), which model real low-quality
photographs by light transmission disturbance, image blurring and retinal artifacts: here a
light-leak haze ring at the rim, a dark unevenly lit region, dust spots and strong defocus blur,
each with a per-camera rate. EyeQ graded about 42% of EyePACS photographs below "good", so the
EyePACS-like profile has the highest rates; IDRiD's images were selected for quality, so its are low.
A defect never changes the masks or the grades.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from codebase.data.synthetic.anatomy import enlarge, smooth_noise, work_size

DEFECTS = ("light_leak", "dark_region", "dust", "blur")


@dataclass(frozen=True)
class Camera:
    name: str
    description: str
    aspect: float                 # native frame width / height
    native_width: int             # native frame width in pixels (detail above it is lost)
    field: str                    # "circle", "cut" (circle cut by the frame) or "notch"
    field_radius: float           # field radius / frame height (> 0.5: cut at top and bottom)
    mean_rgb: tuple[float, float, float]  # target mean over the whole frame
    published: bool               # mean_rgb is a published dataset statistic
    vignetting: float             # brightness lost at the field's rim (fraction)
    uneven: float                 # amplitude of low-frequency uneven illumination
    defocus: float                # Gaussian blur sigma, fraction of the field radius
    noise: float                  # sensor noise sd (0-255 scale)
    jpeg_quality: int
    surround: float               # grey level of the surround
    defect_rates: dict[str, float] = field(default_factory=dict)


CAMERAS = {
    camera.name: camera for camera in (
        Camera("idrid", "IDRiD (Kowa VX-10 alpha, 50 deg, 4288x2848): circle cut at top and bottom",
               1.5056, 4288, "cut", 0.61, (116.5, 56.4, 16.3), True, 0.25, 0.06, 0.0004, 1.5, 95, 0.0,
               {"light_leak": 0.03, "dark_region": 0.03, "dust": 0.05, "blur": 0.02}),
        Camera("ddr", "DDR (several cameras, 45 deg): full circle in a 4:3 frame",
               1.3333, 2048, "circle", 0.47, (81.2, 50.6, 21.2), True, 0.35, 0.10, 0.0008, 2.5, 90, 2.0,
               {"light_leak": 0.08, "dark_region": 0.08, "dust": 0.10, "blur": 0.06}),
        Camera("eyepacs", "EyePACS cropped to the field and resized to 512x512: circle touching the frame",
               1.0, 512, "circle", 0.5, (108.6, 75.8, 54.3), True, 0.40, 0.14, 0.0015, 3.0, 80, 0.0,
               {"light_leak": 0.12, "dark_region": 0.12, "dust": 0.12, "blur": 0.10}),
        Camera("notched", "45 deg camera, 3:2 frame, full circle with an orientation notch (target not published)",
               1.5, 2400, "notch", 0.46, (71.0, 39.0, 14.0), False, 0.30, 0.08, 0.0006, 2.0, 88, 1.0,
               {"light_leak": 0.05, "dark_region": 0.05, "dust": 0.08, "blur": 0.04}),
        # The external datasets' stand-ins (codebase/data/synthetic_formats.py), one camera each; their
        # colour targets are not published figures (chosen within the range of the three published ones).
        Camera("aptos", "APTOS 2019 (several cameras, fields cut at top and bottom, varied quality; target not "
               "published)", 1.5, 2416, "cut", 0.57, (104.0, 58.0, 24.0), False, 0.35, 0.12, 0.0012, 3.0, 85, 3.0,
               {"light_leak": 0.10, "dark_region": 0.10, "dust": 0.10, "blur": 0.08}),
        Camera("messidor2", "Messidor-2 (Topcon TRC NW6, 45 deg, 2240x1488): full circle in a 3:2 frame (target not "
               "published)", 1.5054, 2240, "circle", 0.47, (66.0, 34.0, 11.0), False, 0.25, 0.06, 0.0005, 1.5, 92, 0.0,
               {"light_leak": 0.03, "dark_region": 0.03, "dust": 0.05, "blur": 0.02}),
        Camera("fgadr", "FGADR Seg-set (1280x1280): full circle in a square frame (target not published)",
               1.0, 1280, "circle", 0.48, (92.0, 52.0, 20.0), False, 0.30, 0.08, 0.0008, 2.0, 90, 0.0,
               {"light_leak": 0.05, "dark_region": 0.05, "dust": 0.08, "blur": 0.04}),
    )
}
DEFAULT_CAMERA = "idrid"
# The default tree's cameras; "eyepacs" is held out of it, so a tree of that camera
# (`--camera eyepacs`) is a test set from a camera the model never saw (codebase/data/synthetic_formats.py
# draws the external formats with the other profiles).
DEFAULT_MIX = {"idrid": 0.5, "ddr": 0.25, "notched": 0.25}
HELD_OUT_CAMERA = "eyepacs"


def camera_named(name: str) -> Camera:
    if name not in CAMERAS:
        raise ValueError(f"camera {name!r}: expected one of {', '.join(CAMERAS)}")
    return CAMERAS[name]


def frame_box(camera: Camera, width: int, height: int) -> tuple[float, float, float, float]:
    """The camera's native frame fitted (centred) into a width x height image: left, top, right, bottom."""
    box_h = min(float(height), width / camera.aspect)
    box_w = box_h * camera.aspect
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return left, top, left + box_w, top + box_h


def field_geometry(rng, camera: Camera, box) -> tuple[float, float, float]:
    """(cx, cy, radius) of the field of view in a frame box, with a small centring jitter."""
    left, top, right, bottom = box
    box_h = bottom - top
    radius = camera.field_radius * box_h * rng.uniform(0.98, 1.0)
    cx = (left + right) / 2 + rng.uniform(-0.01, 0.01) * box_h
    cy = (top + bottom) / 2 + rng.uniform(-0.01, 0.01) * box_h
    return cx, cy, radius


def field_mask(camera: Camera, eye) -> np.ndarray:
    """float32 [H, W] coverage of the field of view (anti-aliased rim, cut by the frame box, notch)."""
    ys = np.arange(eye.height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(eye.width, dtype=np.float32)[None, :] + 0.5
    r = np.sqrt((xs - eye.cx) ** 2 + (ys - eye.cy) ** 2)
    mask = np.clip(eye.radius - r + 0.5, 0, 1)
    left, top, right, bottom = eye.box
    mask *= np.clip(np.minimum(ys - top, bottom - ys) + 0.5, 0, 1)
    mask *= np.clip(np.minimum(xs - left, right - xs) + 0.5, 0, 1)
    if camera.field == "notch":  # a small square notch at the top of the rim
        size = 0.07 * eye.radius
        notch = (np.abs(xs - eye.cx) < size / 2) & (ys < eye.cy - eye.radius + size)
        mask = np.where(notch, 0.0, mask)
    return mask.astype(np.float32)


def _illumination(rng, camera: Camera, eye) -> np.ndarray:
    """Vignetting and uneven illumination, float32 [H, W, 1] (computed small, enlarged)."""
    w, h, f = work_size(eye.width, eye.height)
    ys = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / f
    xs = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / f
    r = np.sqrt((xs - eye.cx) ** 2 + (ys - eye.cy) ** 2) / eye.radius
    light = 1.0 - camera.vignetting * rng.uniform(0.7, 1.3) * np.clip(r, 0, 1.2) ** 3
    angle = rng.uniform(0, 2 * np.pi)
    gradient = ((xs - eye.cx) * np.cos(angle) + (ys - eye.cy) * np.sin(angle)) / eye.radius
    light *= np.exp(camera.uneven * rng.uniform(0.5, 1.5) * (gradient + 0.5 * smooth_noise(rng, h, w, (3, 4))[..., 0]))
    return enlarge(light.astype(np.float32)[..., None], eye.width, eye.height)


def _defects(rng, camera: Camera, eye, image: np.ndarray, inside: np.ndarray) -> list[str]:
    """Apply this image's acquisition defects to the float image [H, W, 3] (0-255 scale) in place."""
    chosen = [name for name in DEFECTS if rng.random() < camera.defect_rates.get(name, 0.0)]
    if not chosen or not ({"light_leak", "dark_region", "dust"} & set(chosen)):
        return chosen
    w, h, f = work_size(eye.width, eye.height)
    ys = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / f
    xs = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / f
    r = np.sqrt((xs - eye.cx) ** 2 + (ys - eye.cy) ** 2) / eye.radius
    theta = np.arctan2(ys - eye.cy, xs - eye.cx)
    gain = np.ones((h, w), np.float32)
    haze = np.zeros((h, w), np.float32)
    if "light_leak" in chosen:  # a whitish haze ring along part of the rim
        arc = np.clip(np.cos(theta - rng.uniform(0, 2 * np.pi)) + rng.uniform(0.2, 0.8), 0, 1)
        haze += rng.uniform(60, 120) * np.exp(-((r - 1.0) / rng.uniform(0.06, 0.12)) ** 2) * arc
    if "dark_region" in chosen:  # a large, unevenly lit dark region
        at = rng.uniform(0, 2 * np.pi)
        d2 = (xs - eye.cx - 0.6 * eye.radius * np.cos(at)) ** 2 + (ys - eye.cy - 0.6 * eye.radius * np.sin(at)) ** 2
        gain *= 1.0 - rng.uniform(0.45, 0.7) * np.exp(-d2 / (2 * (rng.uniform(0.3, 0.5) * eye.radius) ** 2))
    if "dust" in chosen:  # small, blurred dark spots (dust on the optics)
        for _ in range(rng.integers(2, 7)):
            rho, at = eye.radius * np.sqrt(rng.uniform(0, 0.8)), rng.uniform(0, 2 * np.pi)
            d2 = (xs - eye.cx - rho * np.cos(at)) ** 2 + (ys - eye.cy - rho * np.sin(at)) ** 2
            gain *= 1.0 - rng.uniform(0.15, 0.35) * np.exp(-d2 / (2 * (rng.uniform(0.008, 0.025) * eye.radius) ** 2))
    gain = enlarge(gain[..., None], eye.width, eye.height)
    haze = enlarge(haze[..., None], eye.width, eye.height)
    image *= gain
    image += haze * np.array([1.0, 0.95, 0.85], np.float32) * inside[..., None]
    return chosen


def photograph(rng, camera: Camera, eye, scene: np.ndarray) -> tuple[np.ndarray, dict]:
    """The scene [H, W, 3] (linear reflectance) as this camera records it: uint8 [H, W, 3] and a record
    {"camera", "defects"}. The scene array is used as scratch space."""
    inside = field_mask(camera, eye)
    image = scene
    image *= _illumination(rng, camera, eye) * inside[..., None]
    left, top, right, bottom = (int(round(v)) for v in eye.box)
    frame = image[max(0, top):bottom, max(0, left):right]
    means = frame.reshape(-1, 3).mean(axis=0)
    jitter = rng.lognormal(0.0, 0.06) * rng.lognormal(0.0, 0.03, 3)
    image *= (np.asarray(camera.mean_rgb, np.float32) / np.maximum(means, 1e-6) * jitter).astype(np.float32)
    defects = _defects(rng, camera, eye, image, inside)
    image += camera.surround * (1.0 - inside)[..., None]
    out = Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8))
    box_w = right - left
    if camera.native_width < box_w:  # detail above the camera's resolution is lost
        scale = camera.native_width / box_w
        small = (max(8, round(eye.width * scale)), max(8, round(eye.height * scale)))
        out = out.resize(small, Image.BILINEAR).resize((eye.width, eye.height), Image.BICUBIC)
    sigma = camera.defocus * eye.radius * rng.uniform(0.7, 1.3)
    if "blur" in defects:
        sigma = max(sigma, eye.radius * rng.uniform(0.008, 0.014))
    if sigma >= 0.3:
        out = out.filter(ImageFilter.GaussianBlur(sigma))
    image = np.asarray(out, np.float32)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    image += noise * (camera.noise * (0.4 + 0.6 * inside))[..., None]
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), {"camera": camera.name, "defects": defects}
