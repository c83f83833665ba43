"""DDR (Li et al., Information Sciences 2019) as distributed: a grading part and a lesion part.

Grading: ``DR_grading/{train,valid,test}/*.jpg`` with ``DR_grading/{train,valid,test}.txt``, one
"name.jpg grade" per line; grade 5 means ungradable: left out and counted. Lesions:
``lesion_segmentation/{train,valid,test}/image/*.jpg`` with ``.../label/{EX,HE,MA,SE}/<id>.tif``
(in the valid split the label folder is named ``segmentation label``); a lesion absent from an
image has an all-zero mask (a missing file is read the same way). The test split is scored.

Labels: grades 0-4 are ICDR -> RG by `rg_from_icdr`. No macular edema label (MER, DME absent);
lesions MA, HE, EX, SE; no optic disc masks (OD absent). A tree holding only one part has the other
part's tasks absent.
"""
from __future__ import annotations

from collections import Counter

from codebase.data.formats.base import (
    LabelledSet,
    Record,
    duplicate,
    finish,
    image_file,
    lesion_masks,
    parse_grade,
    read_table,
    require_dir,
    require_root,
    rg_from_icdr,
    safe_name,
)

NAME = "ddr"
TITLE = "DDR"
SPLITS = ("train", "valid", "test")
GRADING_DIR = "DR_grading"
LESION_DIR = "lesion_segmentation"
IMAGE_DIR = "image"
LABEL_DIRS = {"train": "label", "valid": "segmentation label", "test": "label"}
LESIONS = ("EX", "HE", "MA", "SE")
UNGRADABLE_GRADE = 5
UNGRADABLE = "ungradable (grade 5)"
IMAGE_SUFFIX, MASK_SUFFIX = ".jpg", ".tif"


def detect(root) -> bool:
    return (root / GRADING_DIR).is_dir() or (root / LESION_DIR).is_dir()


def _grading(root, split, problems, left_out, seen) -> list[Record]:
    labels = root / GRADING_DIR / f"{split}.txt"
    folder = root / GRADING_DIR / split
    rows = read_table(labels, problems, None, delimiter=" ")
    if not require_dir(folder, f"the DR grading {split} images", problems) or not rows:
        return []
    records = []
    for line, cells in rows:
        where = f"{labels}, line {line}"
        if len(cells) != 2:
            problems.append(f"{where}: {' '.join(cells)!r}, expected '<name>.jpg <grade 0-5>'")
            continue
        name = safe_name(cells[0], where, problems)
        grade = parse_grade(cells[1], "grade", range(UNGRADABLE_GRADE + 1), where, problems)
        if name is None or grade is None or duplicate(seen, f"{split}/{name}", where, problems):
            continue
        if grade == UNGRADABLE_GRADE:
            left_out[split, UNGRADABLE] += 1
            continue
        path = image_file(folder, name, where, problems)
        if path is not None:
            records.append(Record(f"grading/{split}/{path.stem}", path, split, rg_from_icdr(grade)))
    return records


def _lesions(root, split, problems) -> list[Record]:
    images = root / LESION_DIR / split / IMAGE_DIR
    labels = root / LESION_DIR / split / LABEL_DIRS[split]
    found = require_dir(images, f"the lesion {split} images", problems)
    found &= all([require_dir(labels / lesion, f"the {lesion} masks <id>{MASK_SUFFIX}", problems)
                  for lesion in LESIONS])
    if not found:
        return []
    records = []
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() == IMAGE_SUFFIX):
        masks = lesion_masks({lesion: labels / lesion / f"{path.stem}{MASK_SUFFIX}" for lesion in LESIONS},
                             path.name, problems)
        records.append(Record(f"lesions/{split}/{path.stem}", path, split, mask_paths=masks))
    known = {path.stem for path in images.iterdir()}
    for lesion in LESIONS:
        for mask in sorted((labels / lesion).iterdir()):
            if mask.suffix.lower() == MASK_SUFFIX and mask.stem not in known:
                problems.append(f"{mask}: mask without an image, expected {images / (mask.stem + IMAGE_SUFFIX)}")
    if not records:
        problems.append(f"{images}: no {IMAGE_SUFFIX} images found")
    return records


def read(root) -> LabelledSet:
    root = require_root(root, TITLE, f"{GRADING_DIR}/ and/or {LESION_DIR}/")
    problems: list[str] = []
    records, left_out, seen = [], Counter(), {}
    absent = {"mer": "DDR has no macular edema label", "dme": "DDR has no macular edema label",
              "OD": "DDR has no optic disc masks"}
    grading = (root / GRADING_DIR).is_dir()
    lesions = (root / LESION_DIR).is_dir()
    if not grading and not lesions:
        problems.append(f"{root}: neither {GRADING_DIR}/ nor {LESION_DIR}/ found, expected DDR's tree")
    if grading:
        for split in SPLITS:
            records += _grading(root, split, problems, left_out, seen)
    else:
        absent["rg"] = f"this DDR tree has no {GRADING_DIR}/"
    if lesions:
        for split in SPLITS:
            records += _lesions(root, split, problems)
    else:
        absent.update({lesion: f"this DDR tree has no {LESION_DIR}/" for lesion in LESIONS})
    return finish(LabelledSet(NAME, root, records, ("rg",) if grading else (), LESIONS if lesions else (), absent,
                              left_out, test_split="test"), problems)
