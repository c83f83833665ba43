"""IDRiD on disk: folder and file names, records, validation and `python -m codebase.data.idrid check`.

This is the only module that knows how IDRiD is laid out (see data/README.md). Everything else asks
it for records (image path, mask paths, grades) and reads pixels through codebase.data.images.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from codebase.data.images import (
    ImageFileError,
    read_mask_image,
    read_size,
    verify_image,
)

LESIONS = ("MA", "HE", "EX", "SE", "OD")
LESION_NAMES = {
    "MA": "Microaneurysms",
    "HE": "Haemorrhages",
    "EX": "Hard Exudates",
    "SE": "Soft Exudates",
    "OD": "Optic Disc",
}
SPLITS = ("train", "test")
NUM_RG_CLASSES = 5
NUM_MER_CLASSES = 3

SEGMENTATION_DIR = "A. Segmentation"
GRADING_DIR = "B. Disease Grading"
_IMAGES_DIR = "1. Original Images"
_MASKS_DIR = "2. All Segmentation Groundtruths"
_LABELS_DIR = "2. Groundtruths"
_SPLIT_DIRS = {"train": "a. Training Set", "test": "b. Testing Set"}
_LESION_DIRS = {code: f"{i}. {LESION_NAMES[code]}" for i, code in enumerate(LESIONS, start=1)}
_LABEL_FILES = {
    "train": "a. IDRiD_Disease Grading_Training Labels.csv",
    "test": "b. IDRiD_Disease Grading_Testing Labels.csv",
}
IMAGE_SUFFIX = ".jpg"
MASK_SUFFIX = ".tif"

# Grading CSV header as distributed (note the trailing space of the third column).
CSV_NAME_COLUMN = "Image name"
CSV_RG_COLUMN = "Retinopathy grade"
CSV_MER_COLUMN = "Risk of macular edema "
CSV_HEADER = (CSV_NAME_COLUMN, CSV_RG_COLUMN, CSV_MER_COLUMN)

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*")


class IDRiDError(ImageFileError):
    """Bad dataset input: a file that cannot be read (what ImageFileError covers) or a tree, name or
    label that is not IDRiD's. `problems` lists every problem found (the message joins them)."""


@dataclass(frozen=True)
class GradingRecord:
    name: str
    image_path: Path
    retinopathy_grade: int
    macular_edema_risk: int


@dataclass(frozen=True)
class SegmentationRecord:
    name: str
    image_path: Path
    mask_paths: dict[str, Path | None]  # None: lesion absent, all pixels negative


# ----------------------------------------------------------------------------- paths
def _check_split(split: str) -> str:
    if split not in _SPLIT_DIRS:
        raise IDRiDError(f"split {split!r}: expected one of {SPLITS}")
    return _SPLIT_DIRS[split]


def segmentation_image_dir(root, split: str) -> Path:
    return Path(root) / SEGMENTATION_DIR / _IMAGES_DIR / _check_split(split)


def segmentation_mask_dir(root, split: str, lesion: str) -> Path:
    if lesion not in _LESION_DIRS:
        raise IDRiDError(f"lesion {lesion!r}: expected one of {LESIONS}")
    return Path(root) / SEGMENTATION_DIR / _MASKS_DIR / _check_split(split) / _LESION_DIRS[lesion]


def segmentation_image_path(root, split: str, name: str) -> Path:
    return segmentation_image_dir(root, split) / f"{name}{IMAGE_SUFFIX}"


def segmentation_mask_path(root, split: str, name: str, lesion: str) -> Path:
    return segmentation_mask_dir(root, split, lesion) / f"{name}_{lesion}{MASK_SUFFIX}"


def grading_image_dir(root, split: str) -> Path:
    return Path(root) / GRADING_DIR / _IMAGES_DIR / _check_split(split)


def grading_image_path(root, split: str, name: str) -> Path:
    return grading_image_dir(root, split) / f"{name}{IMAGE_SUFFIX}"


def grading_labels_path(root, split: str) -> Path:
    _check_split(split)
    return Path(root) / GRADING_DIR / _LABELS_DIR / _LABEL_FILES[split]


def segmentation_image_name(number: int) -> str:
    """IDRiD_01, IDRiD_02, ...: segmentation images; the test split continues the numbering."""
    return f"IDRiD_{number:02d}"


def grading_image_name(number: int) -> str:
    """IDRiD_001, ...: grading images; each split starts again at 1."""
    return f"IDRiD_{number:03d}"


def tree_present(root) -> bool:
    """True when both sides (segmentation and grading) of the IDRiD tree exist under `root` (contents not checked)."""
    return (Path(root) / SEGMENTATION_DIR).is_dir() and (Path(root) / GRADING_DIR).is_dir()


# ----------------------------------------------------------------------------- records
def _require_dir(path: Path, what: str, problems: list[str]) -> bool:
    if not path.is_dir():
        problems.append(f"{path}: missing folder, expected {what}")
        return False
    return True


def _require_root(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise IDRiDError(
            f"{root}: data root not found, expected a folder holding '{SEGMENTATION_DIR}' and "
            f"'{GRADING_DIR}' (see data/README.md, or make a synthetic one with "
            f"`python -m codebase.data.synthetic {root}`)"
        )
    return root


def _parse_label(text: str, column: str, upper: int, where: str, problems: list[str]) -> int | None:
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        problems.append(f"{where}: {column.strip()!r} is {text!r}, expected an integer 0-{upper}")
        return None
    value = int(text)
    if not 0 <= value <= upper:
        problems.append(f"{where}: {column.strip()!r} is {value}, expected 0-{upper}")
        return None
    return value


def _image_name(text: str, where: str, problems: list[str]) -> str | None:
    """The CSV's image name, refused when it could point outside its folder."""
    name = text.strip()
    if name.lower().endswith(IMAGE_SUFFIX):
        name = name[: -len(IMAGE_SUFFIX)]
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        problems.append(
            f"{where}: image name {text!r} refused, expected a plain file name such as IDRiD_001 "
            f"(no folders, no '..', not absolute)"
        )
        return None
    return name


def _find_file(folder: Path, name: str, suffix: str) -> Path:
    """folder/<name><suffix>, or the one file whose suffix differs only in case (IMG.JPG); the
    lower-case path when neither exists."""
    path = folder / f"{name}{suffix}"
    if path.is_file() or os.path.lexists(path):
        return path
    try:
        matches = [other for other in folder.iterdir()
                   if other.stem == name and other.suffix.lower() == suffix and other.suffix != suffix]
    except OSError:
        return path
    return matches[0] if len(matches) == 1 else path


def _broken(path: Path, what: str) -> str | None:
    """A problem when `path` exists as a name but is not a readable regular file (a broken link,
    a folder), else None."""
    if path.is_file() or not os.path.lexists(path):
        return None
    if path.is_symlink() and not path.exists():
        return f"{path}: broken link (to {os.readlink(path)}), expected {what}"
    return f"{path}: not a regular file, expected {what}"


def _scan_grading(root: Path, split: str, problems: list[str]) -> list[GradingRecord]:
    csv_path = grading_labels_path(root, split)
    image_dir = grading_image_dir(root, split)
    if not _require_dir(image_dir, f"the grading {split} images", problems):
        return []
    if not csv_path.is_file():
        problems.append(f"{csv_path}: missing grading labels, expected a CSV file")
        return []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(f"{csv_path}: unreadable CSV ({error})")
        return []
    if not rows:
        problems.append(f"{csv_path}: empty file, expected a header {', '.join(map(repr, CSV_HEADER))}")
        return []
    header = [cell.strip() for cell in rows[0]]
    columns = {}
    for wanted in CSV_HEADER:
        if wanted.strip() not in header:
            problems.append(f"{csv_path}: missing column {wanted!r}; found {[c for c in rows[0] if c]}")
        else:
            columns[wanted] = header.index(wanted.strip())
    if len(columns) < len(CSV_HEADER):
        return []

    records, first_line = [], {}
    for line_number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank or comma-only line
        where = f"{csv_path}, line {line_number}"
        cells = [row[columns[c]] if columns[c] < len(row) else "" for c in CSV_HEADER]
        name = _image_name(cells[0], where, problems)
        rg = _parse_label(cells[1], CSV_RG_COLUMN, NUM_RG_CLASSES - 1, where, problems)
        mer = _parse_label(cells[2], CSV_MER_COLUMN, NUM_MER_CLASSES - 1, where, problems)
        if name is None:
            continue
        if name in first_line:
            problems.append(f"{where}: duplicate image name {name!r} (first on line {first_line[name]})")
            continue
        first_line[name] = line_number
        image_path = _find_file(image_dir, name, IMAGE_SUFFIX)
        broken = _broken(image_path, "an image")
        if broken:
            problems.append(f"{where}: {broken}")
            continue
        if not image_path.is_file():
            problems.append(f"{where}: image {name!r} listed but {image_path} not found")
            continue
        if rg is not None and mer is not None:
            records.append(GradingRecord(name, image_path, rg, mer))
    if not first_line and not problems:
        problems.append(f"{csv_path}: no images listed (only a header), expected one line per image")
    return records


def _scan_segmentation(root: Path, split: str, problems: list[str]) -> list[SegmentationRecord]:
    image_dir = segmentation_image_dir(root, split)
    mask_dirs = {lesion: segmentation_mask_dir(root, split, lesion) for lesion in LESIONS}
    found = [_require_dir(image_dir, f"the segmentation {split} images", problems)]
    found += [_require_dir(d, f"{LESION_NAMES[k]} masks (may be empty)", problems) for k, d in mask_dirs.items()]
    if not all(found):
        return []
    images = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() != IMAGE_SUFFIX:
            continue
        broken = _broken(path, "an image")
        if broken:
            problems.append(broken)
        elif path.stem in images:
            problems.append(f"{path}: a second image named {path.stem!r} (also {images[path.stem]}), expected one")
        else:
            images[path.stem] = path
    names = sorted(images)
    if not names:
        problems.append(f"{image_dir}: no {IMAGE_SUFFIX} images found")
    known = set(names)
    for lesion, mask_dir in mask_dirs.items():
        for path in sorted(p for p in mask_dir.iterdir() if p.suffix.lower() == MASK_SUFFIX):
            if not path.stem.endswith(f"_{lesion}"):
                problems.append(f"{path}: unexpected name, expected <image name>_{lesion}{MASK_SUFFIX}")
            elif path.stem[: -len(lesion) - 1] not in known:
                owner = image_dir / f"{path.stem[: -len(lesion) - 1]}{IMAGE_SUFFIX}"
                problems.append(f"{path}: mask without an image, expected {owner}")
    records = []
    for name in names:
        masks = {}
        for lesion in LESIONS:
            path = _find_file(mask_dirs[lesion], f"{name}_{lesion}", MASK_SUFFIX)
            broken = _broken(path, f"the {LESION_NAMES[lesion]} mask of {name} (remove it if the image has none)")
            if broken:
                problems.append(broken)
            masks[lesion] = path if path.is_file() else None
        records.append(SegmentationRecord(name, images[name], masks))
    return records


def grading_records(root, split: str) -> list[GradingRecord]:
    """Records of a grading split, in CSV order; IDRiDError lists every problem found."""
    problems: list[str] = []
    records = _scan_grading(_require_root(root), split, problems)
    if problems:
        raise IDRiDError(problems)
    return records


def segmentation_records(root, split: str) -> list[SegmentationRecord]:
    """Records of a segmentation split, sorted by name; absent masks are None."""
    problems: list[str] = []
    records = _scan_segmentation(_require_root(root), split, problems)
    if problems:
        raise IDRiDError(problems)
    return records


def check_files(records) -> None:
    """Decode every image of `records` at 1/8 scale (which still reads every byte) and open every
    mask's header: IDRiDError listing each empty, truncated, unreadable or oversized file and each
    mask whose size differs from its image's, so a run finds them before training instead of when
    it first reads them (a test image: after the last epoch)."""
    problems: list[str] = []
    for record in records:
        size = _verify_image(record.image_path, problems)
        if size is None:
            continue
        for path in getattr(record, "mask_paths", {}).values():
            if path is None:
                continue
            try:
                mask_size = read_size(path)
            except ImageFileError as error:
                problems.extend(error.problems)
                continue
            if mask_size != size:
                problems.append(f"{path}: mask is {mask_size[0]}x{mask_size[1]}, expected {size[0]}x{size[1]} "
                                "(the size of its image)")
    if problems:
        raise IDRiDError(problems)


# ----------------------------------------------------------------------------- check
def _verify_image(path: Path, problems: list[str]) -> tuple[int, int] | None:
    """`verify_image`, its problems added to ``problems`` (then None)."""
    try:
        return verify_image(path)
    except ImageFileError as error:
        problems.extend(error.problems)
        return None


def check(root) -> tuple[dict, list[str]]:
    """Read and verify the whole tree: (summary, problems). Every file is decoded once."""
    problems: list[str] = []
    root = _require_root(root)
    summary: dict = {"segmentation": {}, "grading": {}}
    for split in SPLITS:
        records = _scan_segmentation(root, split, problems)
        masks = Counter()
        for record in tqdm(records, desc=f"check segmentation {split}", leave=False):
            size = _verify_image(record.image_path, problems)
            for lesion, path in record.mask_paths.items():
                if path is None:
                    continue
                masks[lesion] += 1
                try:
                    read_mask_image(path, expected_size=size)
                except ImageFileError as error:
                    problems.extend(error.problems)
        summary["segmentation"][split] = {"images": len(records), "masks": {k: masks[k] for k in LESIONS}}

        records = _scan_grading(root, split, problems)
        for record in tqdm(records, desc=f"check grading {split}", leave=False):
            _verify_image(record.image_path, problems)
        summary["grading"][split] = {
            "images": len(records),
            "rg": [sum(r.retinopathy_grade == g for r in records) for g in range(NUM_RG_CLASSES)],
            "mer": [sum(r.macular_edema_risk == g for r in records) for g in range(NUM_MER_CLASSES)],
        }
    return summary, problems


def format_summary(root, summary: dict) -> str:
    lines = [f"IDRiD at {root}", "", "Segmentation    images  " + "  ".join(f"{k:>3}" for k in LESIONS)]
    for split, info in summary["segmentation"].items():
        counts = "  ".join(f"{info['masks'][k]:>3}" for k in LESIONS)
        lines.append(f"  {split:<14}{info['images']:>6}  {counts}")
    lines += ["", "Grading         images  RG 0..4                MER 0..2"]
    for split, info in summary["grading"].items():
        rg = " ".join(f"{n:>4}" for n in info["rg"])
        mer = " ".join(f"{n:>4}" for n in info["mer"])
        lines.append(f"  {split:<14}{info['images']:>6}  {rg}   {mer}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codebase.data.idrid", description="IDRiD dataset tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="verify a data root; print a summary or every problem")
    check_parser.add_argument("root", nargs="?", default="data", help="data root (default: data)")
    args = parser.parse_args(argv)
    try:
        summary, problems = check(args.root)
    except IDRiDError as error:
        summary, problems = None, error.problems
    if problems:
        print(f"{len(problems)} problem(s) in {args.root}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(format_summary(args.root, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
