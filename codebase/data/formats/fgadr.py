"""FGADR's Seg-set (Zhou et al., IEEE TMI 2021) as distributed: ``Seg-set/Original_Images/*.png``
(1280x1280), lesion masks of the same file name in ``HardExudate_Masks``, ``SoftExudate_Masks``,
``Hemohedge_Masks`` (sic) and ``Microaneurysms_Masks``, and ``DR_Seg_Grading_Label.csv``: no
header, one "file name, grade 0-4" per line.

The microaneurysm masks are anti-aliased (grey edges around small blobs): their foreground is
grey level >= 128, the other masks' any non-zero value. A missing mask file means the lesion is
absent from the image. The IRMA and neovascularisation masks are ignored (no task of the
project's). The whole set is scored (it has no split).

Labels: the grade is ICDR -> RG by `rg_from_icdr`. No macular edema label (MER, DME absent);
lesions MA, HE, EX, SE; no optic disc masks (OD absent).
"""
from __future__ import annotations

from codebase.data.formats.base import (
    LabelledSet,
    Record,
    finish,
    lesion_masks,
    parse_grade,
    read_table,
    require_dir,
    require_root,
    rg_from_icdr,
    safe_name,
)

NAME = "fgadr"
TITLE = "FGADR"
SEG_SET = "Seg-set"
IMAGES_DIR = "Original_Images"
MASK_DIRS = {"EX": "HardExudate_Masks", "SE": "SoftExudate_Masks", "HE": "Hemohedge_Masks",
             "MA": "Microaneurysms_Masks"}
IGNORED_MASK_DIRS = ("IRMA_Masks", "Neovascularization_Masks")
LABELS_FILE = "DR_Seg_Grading_Label.csv"
MASK_THRESHOLDS = {"MA": 128}  # anti-aliased masks: foreground from this grey level
IMAGE_SUFFIX = ".png"
LESIONS = ("MA", "HE", "EX", "SE")


def detect(root) -> bool:
    return (root / SEG_SET / IMAGES_DIR).is_dir() or (root / SEG_SET / LABELS_FILE).is_file()


def read(root) -> LabelledSet:
    root = require_root(root, TITLE, f"{SEG_SET}/")
    problems: list[str] = []
    seg_set = root / SEG_SET
    images = seg_set / IMAGES_DIR
    found = require_dir(images, "the original images *.png", problems)
    found &= all([require_dir(seg_set / folder, f"the {lesion} masks", problems)
                  for lesion, folder in MASK_DIRS.items()])
    rows = read_table(seg_set / LABELS_FILE, problems, None)
    if not found or rows is None:
        return finish(LabelledSet(NAME, root, [], (), (), {}), problems)  # raises: there are problems
    grades, first = {}, {}
    for line, cells in rows:
        where = f"{seg_set / LABELS_FILE}, line {line}"
        cells = [cell for cell in cells if cell.strip()]
        if len(cells) != 2:
            problems.append(f"{where}: {','.join(cells)!r}, expected '<file name>,<grade 0-4>' "
                            "(the file has no header)")
            continue
        name = safe_name(cells[0], where, problems)
        grade = parse_grade(cells[1], "grade", range(5), where, problems)
        if name is None or grade is None:
            continue
        if name in first:
            problems.append(f"{where}: duplicate image {name!r} (first on line {first[name]})")
            continue
        first[name] = line
        grades[name] = rg_from_icdr(grade)
    files = {path.name: path for path in sorted(images.iterdir()) if path.suffix.lower() == IMAGE_SUFFIX}
    records = []
    for name, path in files.items():
        if name not in grades:
            problems.append(f"{path}: no grade in {seg_set / LABELS_FILE}, expected a line '{name},<grade>'")
            continue
        masks = lesion_masks({lesion: seg_set / folder / name for lesion, folder in MASK_DIRS.items()}, name, problems)
        records.append(Record(path.stem, path, "all", grades[name], mask_paths=masks,
                              mask_thresholds=dict(MASK_THRESHOLDS)))
    for name in grades:
        if name not in files:
            problems.append(f"{seg_set / LABELS_FILE}, line {first[name]}: image {name!r} listed but "
                            f"{images / name} not found")
    absent = {"mer": "FGADR has no macular edema label", "dme": "FGADR has no macular edema label",
              "OD": "FGADR has no optic disc masks"}
    return finish(LabelledSet(NAME, root, records, ("rg",), LESIONS, absent), problems)
