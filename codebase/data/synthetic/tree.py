"""Writing the synthetic IDRiD tree: IDRiD's folders, names and file quirks, one camera profile per
image (recorded in synthetic.json), built in a staging folder and moved into place.

File quirks: JPEG images (each camera's JPEG quality), TIFF masks in several pixel formats (1-bit,
8-bit grey with 255 or other non-zero values, palette, RGB, and the last test image's EX mask as
RGBA with the mask in alpha), no mask file for an absent lesion, grading CSVs with a trailing-space
header, empty unnamed columns and blank trailing lines. Same seed, same bytes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from codebase.data import idrid
from codebase.data.synthetic import cameras
from codebase.data.synthetic.grading import MER_MIX_WITH_LESIONS, RG_MIX, SEG_MER_MIX, SEG_RG_MIX
from codebase.data.synthetic.render import render

DEFAULT_SIZE = (576, 384)  # (W, H); IDRiD itself is 4288 x 2848
DEFAULT_COUNTS = {"seg_train": 30, "seg_test": 12, "grade_train": 160, "grade_test": 60}

_STREAMS = {("segmentation", "train"): 0, ("segmentation", "test"): 1, ("grading", "train"): 2, ("grading", "test"): 3}
_MASK_FORMATS = ("1bit", "grey255", "grey_odd", "palette", "rgb")
_ODD_GREY_VALUES = (1, 29, 76, 150, 201)


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


def _cameras_for(count: int, mix: dict[str, float], rng) -> list[str]:
    names = list(mix)
    return [names[k] for k in _quota(count, [mix[name] for name in names], rng)]


def _save_image(root: Path, path: Path, image: np.ndarray, record: dict, records: dict) -> None:
    Image.fromarray(image).save(path, quality=cameras.camera_named(record["camera"]).jpeg_quality)
    records[path.relative_to(root).as_posix()] = dict(record)


def _write_segmentation(root: Path, split: str, first: int, count: int, seed: int, size, last_is_rgba: bool,
                        ma_scale: float, mix: dict[str, float], records: dict):
    rng = np.random.default_rng([seed, _STREAMS["segmentation", split]])
    grades = _quota(count, SEG_RG_MIX, rng)
    risks = _quota(count, SEG_MER_MIX, rng)
    soft = _quota(count, (0.5, 0.5), rng)
    haemorrhage_free = _quota(count, (0.85, 0.15), rng)
    camera_names = _cameras_for(count, mix, rng)
    for folder in [idrid.segmentation_image_dir(root, split)] + [
        idrid.segmentation_mask_dir(root, split, lesion) for lesion in idrid.LESIONS
    ]:
        folder.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(count), desc=f"synthetic segmentation {split}", leave=False, disable=not count):
        number = first + i
        name = idrid.segmentation_image_name(number)
        image_rng = np.random.default_rng([seed, _STREAMS["segmentation", split], number])
        record = {}
        image, masks, _, _ = render(image_rng, size, int(grades[i]), int(risks[i]), bool(soft[i]),
                                    haemorrhages=not (haemorrhage_free[i] and grades[i] == 2), ma_scale=ma_scale,
                                    camera=camera_names[i], record=record)
        _save_image(root, idrid.segmentation_image_path(root, split, name), image, record, records)
        for k, lesion in enumerate(idrid.LESIONS):
            if not masks[k].any():
                continue  # absent lesion: no file, as in IDRiD
            fmt = _MASK_FORMATS[(number + k) % len(_MASK_FORMATS)]
            if last_is_rgba and i == count - 1 and lesion == "EX":
                fmt = "rgba"
            compression = "group4" if fmt == "1bit" else "tiff_lzw"
            _mask_image(masks[k], fmt, number).save(
                idrid.segmentation_mask_path(root, split, name, lesion), compression=compression)


def _write_grading(root: Path, split: str, count: int, seed: int, size, ma_scale: float, mix: dict[str, float],
                   records: dict) -> list[tuple[str, int, int]]:
    rng = np.random.default_rng([seed, _STREAMS["grading", split]])
    grades = _quota(count, RG_MIX, rng)
    risks = np.zeros(count, int)
    lesioned = np.flatnonzero(grades >= 2)
    risks[lesioned] = _quota(len(lesioned), MER_MIX_WITH_LESIONS, rng)
    soft = rng.random(count) < 0.4
    camera_names = _cameras_for(count, mix, rng)
    idrid.grading_image_dir(root, split).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(count), desc=f"synthetic grading {split}", leave=False, disable=not count):
        number = i + 1
        name = idrid.grading_image_name(number)
        image_rng = np.random.default_rng([seed, _STREAMS["grading", split], number])
        record = {}
        image, _, rg, mer = render(image_rng, size, int(grades[i]), int(risks[i]), bool(soft[i]), with_masks=False,
                                   ma_scale=ma_scale, camera=camera_names[i], record=record)
        _save_image(root, idrid.grading_image_path(root, split, name), image, record, records)
        rows.append((name, rg, mer))
    empty = "," * 8  # IDRiD's CSVs carry empty unnamed columns and blank trailing lines
    lines = [",".join(idrid.CSV_HEADER) + empty] + [f"{n},{rg},{mer}{empty}" for n, rg, mer in rows]
    lines += ["," * 10, "," * 10, "", ""]
    csv_path = idrid.grading_labels_path(root, split)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as file:
        file.write("\r\n".join(lines))
    return rows


def camera_mix(names=None) -> dict[str, float]:
    """The default mix of camera profiles, or equal shares of the profiles named."""
    if not names:
        return dict(cameras.DEFAULT_MIX)
    for name in names:
        cameras.camera_named(name)
    return {name: 1.0 for name in dict.fromkeys(names)}


def generate(out, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE, seg_train: int = DEFAULT_COUNTS["seg_train"],
             seg_test: int = DEFAULT_COUNTS["seg_test"], grade_train: int = DEFAULT_COUNTS["grade_train"],
             grade_test: int = DEFAULT_COUNTS["grade_test"], ma_scale: float = 1.0, camera=None) -> Path:
    """Write a synthetic IDRiD tree under `out` (size is (W, H)); returns `out`. `ma_scale` multiplies
    the microaneurysms' diameters (recorded in synthetic.json where it is not 1). `camera`: None for
    the default mix of profiles, or a name or list of names (equal shares). synthetic.json records
    each image's camera and acquisition defects under "images" (keyed by the path in the tree).

    Built in a temporary folder inside `out` and moved into place, so an interrupted run leaves no
    half-written tree. Refuses to write over an existing tree.
    """
    out = Path(out)
    width, height = (int(v) for v in size)
    if width < 32 or height < 32:
        raise ValueError(f"size {width}x{height}: expected at least 32x32 pixels")
    if not 0 < ma_scale <= 4:
        raise ValueError(f"ma_scale {ma_scale}: expected a number in (0, 4]")
    mix = camera_mix([camera] if isinstance(camera, str) else camera)
    for top in (idrid.SEGMENTATION_DIR, idrid.GRADING_DIR):
        if (out / top).exists():
            raise idrid.IDRiDError(f"{out / top}: already exists; remove it or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=out))
    try:
        records = {}
        _write_segmentation(staging, "train", 1, seg_train, seed, (width, height), False, ma_scale, mix, records)
        _write_segmentation(staging, "test", seg_train + 1, seg_test, seed, (width, height), True, ma_scale, mix,
                            records)
        for split, count in (("train", grade_train), ("test", grade_test)):
            _write_grading(staging, split, count, seed, (width, height), ma_scale, mix, records)
        info = {"generator": "codebase.data.synthetic", "seed": seed, "size": [width, height], "seg_train": seg_train,
                "seg_test": seg_test, "grade_train": grade_train, "grade_test": grade_test, "camera_mix": mix}
        if ma_scale != 1.0:
            info["ma_scale"] = ma_scale
        info["images"] = records
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


