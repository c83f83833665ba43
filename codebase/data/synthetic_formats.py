"""Synthetic trees in the layouts of the external datasets (codebase.data.formats), each drawn by
its own synthetic camera, so that every reader is tested and every evaluation runs without a
download.

    python -m codebase.data.synthetic_formats FORMAT OUT [--seed S] [--count N] [--size WxH]

FORMAT is one of aptos, eyepacs, messidor2, ddr, fgadr. Each writer reproduces its set's names and
quirks: APTOS's ``train.csv`` and PNGs of two sizes; EyePACS's ``trainLabels.csv``, JPEGs named
``<n>_left`` / ``<n>_right`` and the test part with ``retinopathy_solution.csv`` (Public and Private
rows); Messidor-2's ``messidor_data.csv`` with several file extensions and ungradable rows (empty
grades, gradable 0); DDR's grading lists with ungradable grade-5 images and its lesion part with
all-zero masks for absent lesions and the valid split's ``segmentation label`` folder; FGADR's
1280x1280 PNGs, header-less grading CSV, its misspelt ``Hemohedge_Masks`` and anti-aliased
microaneurysm masks (grey edge pixels below 128), and the IRMA / neovascularisation masks the
reader ignores. Labels follow what is drawn (codebase.data.synthetic's rules): RG is the drawn
grade, Messidor-2's DME is MER 2 (`codebase.data.formats.base.dme_from_mer`).

Every image comes from `draw_fundus`, the one place a format's camera (`CAMERAS`) meets the
renderer. Same seed, same bytes; a tree is built in a temporary folder and moved into place.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from codebase.data import synthetic
from codebase.data.synthetic.cameras import CAMERAS as CAMERA_PROFILES
from codebase.data.synthetic.grading import MER_MIX_WITH_LESIONS, RG_MIX, SEG_MER_MIX, SEG_RG_MIX
from codebase.data.formats import FORMATS, aptos, ddr, eyepacs, fgadr, messidor2
from codebase.data.formats.base import dme_from_mer
from codebase.data.idrid import LESIONS

# Each format's synthetic camera: the acquisition profile its images are drawn with.
CAMERAS = {"aptos": "aptos", "eyepacs": "eyepacs", "messidor2": "messidor2", "ddr": "ddr", "fgadr": "fgadr"}
DEFAULT_SIZES = {"aptos": (320, 240), "eyepacs": (384, 256), "messidor2": (360, 240), "ddr": (320, 240),
                 "fgadr": (1280, 1280)}
DEFAULT_COUNT = 24
_JPEG_QUALITY = 90


def draw_fundus(rng: np.random.Generator, size, rg: int, mer: int, camera: str, soft_exudates: bool | None = None,
                with_masks: bool = True):
    """One image of ``camera``: (uint8 [H, W, 3], masks bool [5, H, W] in LESIONS order or None, rg, mer);
    rg / mer are targets, the returned grades are those of what was drawn."""
    if camera not in CAMERA_PROFILES:
        raise ValueError(f"camera {camera!r}: expected one of {', '.join(CAMERA_PROFILES)}")
    soft = bool(rng.random() < 0.4) if soft_exudates is None else soft_exudates
    return synthetic.render(rng, tuple(size), rg, mer, soft, with_masks=with_masks, camera=camera)


def _targets(rng, count: int, lesions: bool = False) -> list[tuple[int, int]]:
    """(rg, mer) targets: the grading mix of the synthetic IDRiD, or its segmentation mix (lesions)."""
    if lesions:
        rg = rng.choice(5, size=count, p=SEG_RG_MIX)
        return [(int(g), int(rng.choice(3, p=SEG_MER_MIX))) for g in rg]
    rg = rng.choice(5, size=count, p=RG_MIX)
    return [(int(g), int(rng.choice(3, p=MER_MIX_WITH_LESIONS)) if g >= 2 else 0) for g in rg]


def _image_rng(seed: int, fmt: str, part: int, number: int) -> np.random.Generator:
    return np.random.default_rng([seed, list(CAMERAS).index(fmt), part, number])


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=_JPEG_QUALITY) if path.suffix.lower() in (".jpg", ".jpeg") \
        else Image.fromarray(image).save(path)


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _lesions_of(masks) -> list[str]:
    return [lesion for index, lesion in enumerate(LESIONS) if masks[index].any()]


# ----------------------------------------------------------------------------- writers
def write_aptos(out: Path, seed: int, count: int, size) -> dict:
    """train.csv and train_images/<id_code>.png; every third image square (APTOS's sizes vary)."""
    rng = np.random.default_rng([seed, 0])
    expected, rows = {}, [f"{aptos.ID_COLUMN},{aptos.GRADE_COLUMN}"]
    for number, (rg, mer) in enumerate(_targets(rng, count)):
        name = f"{rng.integers(0, 2**48):012x}"
        shape = (size[1], size[1]) if number % 3 == 2 else size
        image, _, rg, _ = draw_fundus(_image_rng(seed, "aptos", 0, number), shape, rg, mer, CAMERAS["aptos"],
                                      with_masks=False)
        _save(image, out / aptos.IMAGES_DIR / f"{name}{aptos.IMAGE_SUFFIX}")
        rows.append(f"{name},{rg}")
        expected[name] = {"rg": rg}
    _write_text(out / aptos.LABELS_FILE, rows)
    return expected


def write_eyepacs(out: Path, seed: int, count: int, size) -> dict:
    """trainLabels.csv with train/, retinopathy_solution.csv with test/ (half Public, half Private)."""
    expected = {}
    for part, (labels, folder, test) in enumerate(((eyepacs.TRAIN_LABELS, eyepacs.TRAIN_DIR, False),
                                                   (eyepacs.TEST_LABELS, eyepacs.TEST_DIR, True))):
        rng = np.random.default_rng([seed, 1, part])
        header = [eyepacs.IMAGE_COLUMN, eyepacs.GRADE_COLUMN] + ([eyepacs.USAGE_COLUMN] if test else [])
        rows = [",".join(header)]
        for number, (rg, mer) in enumerate(_targets(rng, count if not test else max(2, count // 2))):
            name = f"{number // 2 + 10 + 1000 * part}_{('left', 'right')[number % 2]}"
            image, _, rg, _ = draw_fundus(_image_rng(seed, "eyepacs", part, number), size, rg, mer,
                                          CAMERAS["eyepacs"], with_masks=False)
            _save(image, out / folder / f"{name}{eyepacs.IMAGE_SUFFIX}")
            rows.append(f"{name},{rg}" + (f",{eyepacs.USAGES[number % 2]}" if test else ""))
            expected[name] = {"rg": rg, "split": "test" if test else "train"}
        _write_text(out / labels, rows)
    return expected


def write_messidor2(out: Path, seed: int, count: int, size) -> dict:
    """messidor_data.csv and IMAGES/ with .png, .JPG and .jpg files; two ungradable rows."""
    rng = np.random.default_rng([seed, 2])
    expected, rows = {}, [",".join(messidor2.COLUMNS)]
    extensions = (".png", ".JPG", ".jpg")
    for number, (rg, mer) in enumerate(_targets(rng, count + 2)):
        extension = extensions[number % len(extensions)]
        stem = f"20051020_{43808 + number:05d}_0100_PP" if extension == ".png" else f"IM{number + 1:06d}"
        name = stem + extension
        image, _, rg, mer = draw_fundus(_image_rng(seed, "messidor2", 0, number), size, rg, mer,
                                        CAMERAS["messidor2"], with_masks=False)
        ungradable = number >= count
        if ungradable:  # an image no grader could read: out of focus and dark
            image = np.asarray(Image.fromarray((image * 0.35).astype(np.uint8)).filter(ImageFilter.GaussianBlur(6)))
        _save(image, out / messidor2.IMAGES_DIR / name)
        rows.append(f"{name},,,0" if ungradable else f"{name},{rg},{dme_from_mer(mer)},1")
        if not ungradable:
            expected[name] = {"rg": rg, "dme": dme_from_mer(mer)}
    _write_text(out / messidor2.LABELS_FILE, rows)
    return expected


def write_ddr(out: Path, seed: int, count: int, size) -> dict:
    """DR_grading/ (``count`` images per split and one ungradable, grade 5) and lesion_segmentation/
    (count // 2, at least 2, per split; all four masks per image, all-zero when the lesion is absent)."""
    expected = {}
    for part, split in enumerate(ddr.SPLITS):
        rng = np.random.default_rng([seed, 3, part])
        lines = []
        for number, (rg, mer) in enumerate(_targets(rng, count + 1)):
            name = f"{part:03d}-{number:04d}-{seed % 1000:03d}"
            image, _, rg, _ = draw_fundus(_image_rng(seed, "ddr", part, number), size, rg, mer, CAMERAS["ddr"],
                                          with_masks=False)
            ungradable = number == count
            if ungradable:
                image = (image * 0.2).astype(np.uint8)
            _save(image, out / ddr.GRADING_DIR / split / f"{name}.jpg")
            lines.append(f"{name}.jpg {ddr.UNGRADABLE_GRADE if ungradable else rg}")
            if not ungradable:
                expected[f"grading/{split}/{name}"] = {"rg": rg, "split": split}
        _write_text(out / ddr.GRADING_DIR / f"{split}.txt", lines)
        for number, (rg, mer) in enumerate(_targets(rng, max(2, count // 2), lesions=True)):
            name = f"{part:03d}-{5000 + number:04d}-{seed % 1000:03d}"
            image, masks, _, _ = draw_fundus(_image_rng(seed, "ddr", 10 + part, number), size, rg, mer,
                                             CAMERAS["ddr"])
            root = out / ddr.LESION_DIR / split
            _save(image, root / ddr.IMAGE_DIR / f"{name}.jpg")
            for lesion in ddr.LESIONS:
                path = root / ddr.LABEL_DIRS[split] / lesion / f"{name}{ddr.MASK_SUFFIX}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(masks[LESIONS.index(lesion)].astype(np.uint8) * 255).save(path, compression="tiff_lzw")
            expected[f"lesions/{split}/{name}"] = {"lesions": [l for l in _lesions_of(masks) if l in ddr.LESIONS],
                                                   "split": split}
    return expected


def _anti_aliased(mask: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """255 inside the mask, grey levels 16-120 on the ring of pixels just outside it."""
    inside = Image.fromarray(mask.astype(np.uint8) * 255)
    ring = (np.asarray(inside.filter(ImageFilter.MaxFilter(3))) > 0) & ~mask
    values = np.where(mask, 255, 0).astype(np.uint8)
    values[ring] = rng.integers(16, 121, size=int(ring.sum()))
    return Image.fromarray(values)


def write_fgadr(out: Path, seed: int, count: int, size) -> dict:
    """Seg-set/: PNG images, one mask folder per lesion (a file only where the lesion is drawn, the
    soft exudate masks always), anti-aliased MA masks, blank IRMA / neovascularisation masks, and the
    header-less grading CSV."""
    rng = np.random.default_rng([seed, 4])
    seg_set = out / fgadr.SEG_SET
    expected, lines = {}, []
    for number, (rg, mer) in enumerate(_targets(rng, count, lesions=True)):
        name = f"{number + 1:04d}_{1 + number % 3}{fgadr.IMAGE_SUFFIX}"
        image, masks, rg, _ = draw_fundus(_image_rng(seed, "fgadr", 0, number), size, rg, mer, CAMERAS["fgadr"])
        _save(image, seg_set / fgadr.IMAGES_DIR / name)
        for lesion, folder in fgadr.MASK_DIRS.items():
            mask = masks[LESIONS.index(lesion)]
            if not mask.any() and lesion != "SE":
                continue
            path = seg_set / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            picture = _anti_aliased(mask, rng) if lesion == "MA" else Image.fromarray(mask.astype(np.uint8) * 255)
            picture.save(path)
        for folder in fgadr.IGNORED_MASK_DIRS:
            _save(np.zeros(masks.shape[1:], np.uint8), seg_set / folder / name)
        lines.append(f"{name},{rg}")
        expected[Path(name).stem] = {"rg": rg, "lesions": [l for l in _lesions_of(masks) if l in fgadr.LESIONS]}
    _write_text(seg_set / fgadr.LABELS_FILE, lines)
    return expected


WRITERS = {"aptos": write_aptos, "eyepacs": write_eyepacs, "messidor2": write_messidor2, "ddr": write_ddr,
           "fgadr": write_fgadr}


def generate(fmt: str, out, seed: int = 0, count: int = DEFAULT_COUNT, size=None) -> dict:
    """Write a synthetic ``fmt`` tree under ``out`` (refusing a non-empty folder); returns what its
    reader must find: {record name: {"rg", "dme", "lesions" (non-empty masks), "split"} as the set has them}."""
    if fmt not in WRITERS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(WRITERS)}")
    width, height = size or DEFAULT_SIZES[fmt]
    if width < 32 or height < 32 or count < 1:
        raise ValueError(f"size {width}x{height}, count {count}: expected at least 32x32 pixels and one image")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: already exists and is not empty; remove it or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=out))
    try:
        expected = WRITERS[fmt](staging, seed, count, (width, height))
        info = {"generator": "codebase.data.synthetic_formats", "format": fmt, "camera": CAMERAS[fmt], "seed": seed,
                "count": count, "size": [width, height]}
        (staging / "synthetic.json").write_text(json.dumps(info, indent=1) + "\n")
        for entry in os.listdir(staging):
            os.replace(staging / entry, out / entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return expected


def ensure_tree(fmt: str, out, seed: int = 1, count: int = DEFAULT_COUNT) -> Path:
    """``out``, first writing a synthetic tree there if it holds none: a format of WRITERS, or "idrid" for
    an IDRiD tree from the camera the default synthetic tree holds out (its test splits: ``count`` graded
    and count // 5 segmentation images, at least 2). Seed 1 by default, so its images are not those of the
    default tree (seed 0)."""
    out = Path(out)
    if out.is_dir() and FORMATS[fmt].detect(out):
        return out
    if fmt == "idrid":
        return synthetic.generate(out, seed=seed, seg_train=2, seg_test=max(2, count // 5), grade_train=2,
                                  grade_test=count, camera=synthetic.HELD_OUT_CAMERA)
    generate(fmt, out, seed, count)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codebase.data.synthetic_formats",
                                     description="Write a synthetic dataset in an external dataset's layout.")
    parser.add_argument("format", choices=list(WRITERS))
    parser.add_argument("out", help="output folder, e.g. data/synthetic_ddr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help=f"images (per split) (default {DEFAULT_COUNT})")
    parser.add_argument("--size", type=synthetic.parse_size, help="image size WxH (default: the format's own)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        expected = generate(args.format, args.out, args.seed, args.count, args.size)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote a synthetic {FORMATS[args.format].TITLE} tree ({len(expected)} labelled images, camera "
          f"{CAMERAS[args.format]}) to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
