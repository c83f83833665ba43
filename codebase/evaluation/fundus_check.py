"""Is an input a colour fundus photograph, and is it gradeable? A fast check before prediction.

    check = check_fundus(image)     # numpy uint8 [H, W, 3] RGB, or a PIL image (any mode, made RGB)
    check.is_fundus, check.quality, check.reasons, check.features
    check.as_dict()                 # {"is_fundus": ..., "quality": "good"|"poor", "reasons": [...]}

Everything is measured on a copy whose longest side is at most WORK_SIDE pixels (never enlarged),
so the check costs a few milliseconds at any input size. A fundus photograph is a bright, round
field of view on a dark surround, red dominant inside the field:
  field      pixels brighter than a level relative to the image's own bright level (so a darkened
             photograph still shows its field); the field must match a disc (centred on the field,
             radius from its widest row, clipped to the frame like IDRiD's cut top and bottom)
  surround   enough dark pixels outside the field, much darker than the field
  colour     red above green and blue inside the field
Gradeable (quality "good") needs, inside the field: exposure neither too dark nor over-exposed
(too many clipped pixels), and sharpness: fine detail (image minus a 1-px Gaussian blur) against
medium detail (1-px minus 4-px blur), a ratio that does not depend on contrast or brightness.
A non-fundus input is reported with quality "poor" (it cannot be graded).

The thresholds below were set from `python benchmarks/bench_fundus_check.py`, which prints every
feature on synthetic fundus images (four camera profiles: IDRiD-, DDR- and EyePACS-like colour and
field shapes and a notched field; five sizes from 128x96 to 1072x712; blurred, darkened and
over-exposed copies; images with recorded acquisition defects), scikit-learn's sample photographs
and synthetic non-fundus inputs; the ranges quoted are that table's. They are measured on
synthetic images and two ordinary photographs, not on real fundus photographs: check them on your
own data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

WORK_SIDE = 512  # pixels: longest side of the working copy

# Field of view. Synthetic surrounds sit at 0-3 and fields at 60-200 (max channel, 0-255).
FIELD_RELATIVE_LEVEL = 0.2   # field = max channel above this fraction of the 99th percentile ...
FIELD_MIN_LEVEL = 4.0        # ... and above this absolute level (JPEG noise on black)
MIN_FIELD_FRACTION = 0.25    # the field covers at least this much of the frame
MIN_DISC_IOU = 0.9           # field vs its fitted disc; synthetic fields 0.93-1.0 (IDRiD's cut circle lowest),
#                              photographs 0.65-0.86
MIN_SURROUND_FRACTION = 0.05  # dark surround: at least this much of the frame (synthetic 0.29-0.62)
MAX_SURROUND_RATIO = 0.15    # surround mean / field mean (max channel); synthetic at most 0.03, photographs 0.26-0.28

# Colour inside the field (means of the channels over the field).
MIN_RED_OVER_GREEN = 1.1     # synthetic fundus 1.32-2.24 (EyePACS-like lowest: its published green/red is 0.70);
#                              over-exposed copies 1.05-1.50; photographs 0.82-1.00 (a grey image is exactly 1)
MIN_RED_OVER_BLUE = 1.2      # synthetic fundus about 2 and above (EyePACS' published blue/red is 0.50)

# Exposure inside the field: luminance mean (0-255) and share of clipped pixels (a channel >= 250).
MIN_FIELD_LUMINANCE = 45.0   # synthetic fundus 86-122; darkened copies (x0.3) 25-36
MAX_FIELD_LUMINANCE = 170.0  # synthetic fundus at most 122; over-exposed copies (x2.5) 180-237
MAX_CLIPPED_FRACTION = 0.25  # synthetic fundus 0.00-0.03 (bright discs, exudates); over-exposed copies 0.80-0.99

# Sharpness: std(fine detail) / std(medium detail) on green inside the eroded field.
MIN_SHARPNESS = 0.35         # synthetic fundus 0.60-1.01; blurred copies 0.15-0.24; a recorded blur defect is
#                              flagged from 256x170 up (below a pixel's blur at smaller sizes)

FINE_SIGMA, MEDIUM_SIGMA = 1.0, 4.0  # pixels of the working copy
LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class FundusCheck:
    """The check's decision, its reasons (empty when fundus and good) and the measured features."""

    is_fundus: bool
    quality: str  # "good" or "poor"
    reasons: list[str] = field(default_factory=list)
    features: dict[str, float] = field(default_factory=dict)

    def as_dict(self):
        """What predictions.json records: {"is_fundus", "quality", "reasons"}."""
        return {"is_fundus": self.is_fundus, "quality": self.quality, "reasons": list(self.reasons)}


def as_rgb_array(image) -> np.ndarray:
    """A PIL image (any mode) or a uint8 numpy array [H, W, 3] -> uint8 [H, W, 3] RGB."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image: expected an RGB uint8 array [H, W, 3] or a PIL image, got "
                         f"{array.dtype} array of shape {array.shape}")
    if min(array.shape[:2]) < 8:
        raise ValueError(f"image: {array.shape[1]}x{array.shape[0]} pixels is too small to check (at least 8x8)")
    return array


def working_copy(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [h, w, 3] with max(h, w) <= WORK_SIDE (area-averaged when reduced)."""
    height, width = rgb.shape[:2]
    scale = WORK_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))
    return rgb.astype(np.float32)


def field_of_view(rgb: np.ndarray) -> np.ndarray:
    """float [h, w, 3] -> bool [h, w]: pixels bright against the image's own bright level, holes filled."""
    brightness = rgb.max(axis=2)
    level = max(FIELD_MIN_LEVEL, FIELD_RELATIVE_LEVEL * float(np.percentile(brightness, 99)))
    return ndimage.binary_fill_holes(ndimage.binary_opening(brightness > level, iterations=2))


def disc_iou(mask: np.ndarray) -> float:
    """IoU of the field with a disc at its centroid whose radius is half its widest row (clipped to the frame)."""
    if not mask.any():
        return 0.0
    rows, cols = np.nonzero(mask)
    cy, cx = rows.mean(), cols.mean()
    radius = mask.sum(axis=1).max() / 2
    ys, xs = np.ogrid[:mask.shape[0], :mask.shape[1]]
    disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2
    return float((mask & disc).sum() / (mask | disc).sum())


def sharpness(green: np.ndarray, inside: np.ndarray) -> float:
    """std of fine detail / std of medium detail over ``inside``: contrast- and brightness-free."""
    fine_blur = ndimage.gaussian_filter(green, FINE_SIGMA)
    fine = green - fine_blur
    medium = fine_blur - ndimage.gaussian_filter(green, MEDIUM_SIGMA)
    medium_std = float(medium[inside].std())
    return float(fine[inside].std()) / medium_std if medium_std > 1e-6 else 0.0


def measure(image) -> dict[str, float]:
    """The features the decision uses, measured on the working copy."""
    rgb = working_copy(as_rgb_array(image))
    mask = field_of_view(rgb)
    area = mask.size
    brightness = rgb.max(axis=2)
    features = {"field_fraction": float(mask.sum() / area), "disc_iou": disc_iou(mask),
                "surround_fraction": float((~mask).sum() / area)}
    inside = mask if mask.sum() >= 0.01 * area else np.ones_like(mask)  # no field: judge the whole frame
    field_brightness = float(brightness[inside].mean())
    features["surround_ratio"] = (float(brightness[~mask].mean()) / max(field_brightness, 1e-6)
                                  if (~mask).any() else 1.0)
    red, green, blue = (float(rgb[..., c][inside].mean()) for c in range(3))
    features["red_over_green"] = red / max(green, 1.0)
    features["red_over_blue"] = red / max(blue, 1.0)
    features["luminance"] = float((rgb[inside] @ LUMINANCE).mean())
    features["clipped_fraction"] = float((rgb[inside] >= 250).any(axis=1).mean())
    core = ndimage.binary_erosion(inside, iterations=max(2, round(0.03 * max(mask.shape))))
    features["sharpness"] = sharpness(rgb[..., 1], core if core.sum() >= 64 else inside)
    return features


def check_fundus(image) -> FundusCheck:
    """Decide from the features whether ``image`` is a fundus photograph and gradeable (see module doc)."""
    f = measure(image)
    fundus_reasons = []
    if (f["field_fraction"] < MIN_FIELD_FRACTION or f["disc_iou"] < MIN_DISC_IOU
            or f["surround_fraction"] < MIN_SURROUND_FRACTION or f["surround_ratio"] > MAX_SURROUND_RATIO):
        fundus_reasons.append("no round field of view on a dark surround")
    if f["red_over_green"] < MIN_RED_OVER_GREEN or f["red_over_blue"] < MIN_RED_OVER_BLUE:
        fundus_reasons.append("colours unlike a fundus photograph (red not dominant)")
    quality_reasons = []
    if f["luminance"] < MIN_FIELD_LUMINANCE:
        quality_reasons.append("too dark")
    if f["clipped_fraction"] > MAX_CLIPPED_FRACTION or f["luminance"] > MAX_FIELD_LUMINANCE:
        quality_reasons.append("over-exposed")
    if f["sharpness"] < MIN_SHARPNESS:
        quality_reasons.append("blurred")
    reasons = fundus_reasons + quality_reasons
    return FundusCheck(is_fundus=not fundus_reasons, quality="poor" if reasons else "good",
                       reasons=reasons, features=f)
