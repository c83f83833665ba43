"""EyePACS as distributed for Kaggle's Diabetic Retinopathy Detection (2015): ``trainLabels.csv``
(``image``, ``level`` 0-4) with ``train/<image>.jpeg``, and optionally the released test labels
``retinopathy_solution.csv`` (``image``, ``level``, ``Usage`` Public or Private) with
``test/<image>.jpeg``.

With the test labels the test split (Public and Private rows alike) is scored, else the whole
training set. Labels: ``level`` is the ICDR grade (the competition's page: 0 no DR, 1 mild,
2 moderate, 3 severe, 4 proliferative) -> RG by `rg_from_icdr`. No macular edema label (MER, DME
absent) and no lesion masks.
"""
from __future__ import annotations

from codebase.data.formats.base import (
    LabelledSet,
    Record,
    duplicate,
    finish,
    image_file,
    parse_grade,
    read_table,
    require_dir,
    require_root,
    rg_from_icdr,
    safe_name,
)
from codebase.data.idrid import LESIONS

NAME = "eyepacs"
TITLE = "EyePACS"
TRAIN_LABELS, TRAIN_DIR = "trainLabels.csv", "train"
TEST_LABELS, TEST_DIR = "retinopathy_solution.csv", "test"
IMAGE_COLUMN, GRADE_COLUMN, USAGE_COLUMN = "image", "level", "Usage"
USAGES = ("Public", "Private")
IMAGE_SUFFIX = ".jpeg"
ABSENT = {"mer": "EyePACS has no macular edema label", "dme": "EyePACS has no macular edema label",
          **{lesion: "EyePACS has no lesion masks" for lesion in LESIONS}}


def detect(root) -> bool:
    return (root / TRAIN_LABELS).is_file() or (root / TEST_LABELS).is_file()


def _read_split(root, split, labels, folder, columns, problems, seen) -> list[Record]:
    rows = read_table(root / labels, problems, columns)
    if not require_dir(root / folder, f"the {split} images <image>{IMAGE_SUFFIX}", problems) or not rows:
        return []
    records = []
    for line, row in rows:
        where = f"{root / labels}, line {line}"
        name = safe_name(row[IMAGE_COLUMN], where, problems)
        grade = parse_grade(row[GRADE_COLUMN], GRADE_COLUMN, range(5), where, problems)
        if USAGE_COLUMN in row and row[USAGE_COLUMN].strip() not in USAGES:
            problems.append(f"{where}: {USAGE_COLUMN!r} is {row[USAGE_COLUMN]!r}, expected {' or '.join(USAGES)}")
        if name is None or duplicate(seen, name, where, problems):
            continue
        path = image_file(root / folder, name + IMAGE_SUFFIX, where, problems)
        if path is not None and grade is not None:
            records.append(Record(name, path, split, rg_from_icdr(grade)))
    return records


def read(root) -> LabelledSet:
    root = require_root(root, TITLE,
                        f"{TRAIN_LABELS} with {TRAIN_DIR}/ (and optionally {TEST_LABELS} with {TEST_DIR}/)")
    problems: list[str] = []
    seen: dict = {}
    has_test = (root / TEST_LABELS).is_file()
    records = []
    if (root / TRAIN_LABELS).is_file() or not has_test:
        records += _read_split(root, "train", TRAIN_LABELS, TRAIN_DIR, (IMAGE_COLUMN, GRADE_COLUMN), problems, seen)
    if has_test:
        records += _read_split(root, "test", TEST_LABELS, TEST_DIR, (IMAGE_COLUMN, GRADE_COLUMN, USAGE_COLUMN),
                               problems, seen)
    return finish(LabelledSet(NAME, root, records, ("rg",), (), dict(ABSENT), test_split="test" if has_test else None),
                  problems)
