"""APTOS 2019 Blindness Detection (Kaggle) as distributed: ``train.csv`` (``id_code``, ``diagnosis``
0-4) and ``train_images/<id_code>.png``.

Only the training part has labels (``test.csv`` lists image ids without a diagnosis), so the whole
labelled set is scored. Labels: ``diagnosis`` is the ICDR grade (the competition's page: 0 no DR,
1 mild, 2 moderate, 3 severe, 4 proliferative DR) -> RG by `rg_from_icdr`. No macular edema label
(MER and DME absent) and no lesion masks.
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

NAME = "aptos"
TITLE = "APTOS 2019"
LABELS_FILE = "train.csv"
IMAGES_DIR = "train_images"
ID_COLUMN, GRADE_COLUMN = "id_code", "diagnosis"
IMAGE_SUFFIX = ".png"
ABSENT = {"mer": "APTOS 2019 has no macular edema label", "dme": "APTOS 2019 has no macular edema label",
          **{lesion: "APTOS 2019 has no lesion masks" for lesion in LESIONS}}


def detect(root) -> bool:
    return (root / LABELS_FILE).is_file() and (root / IMAGES_DIR).is_dir()


def read(root) -> LabelledSet:
    root = require_root(root, TITLE, f"{LABELS_FILE} and {IMAGES_DIR}/")
    problems: list[str] = []
    records, seen = [], {}
    folder = root / IMAGES_DIR
    rows = read_table(root / LABELS_FILE, problems, (ID_COLUMN, GRADE_COLUMN))
    if require_dir(folder, "the training images <id_code>.png", problems) and rows:
        for line, row in rows:
            where = f"{root / LABELS_FILE}, line {line}"
            name = safe_name(row[ID_COLUMN], where, problems)
            grade = parse_grade(row[GRADE_COLUMN], GRADE_COLUMN, range(5), where, problems)
            if name is None or duplicate(seen, name, where, problems):
                continue
            path = image_file(folder, name + IMAGE_SUFFIX, where, problems)
            if path is not None and grade is not None:
                records.append(Record(name, path, "train", rg_from_icdr(grade)))
    return finish(LabelledSet(NAME, root, records, ("rg",), (), dict(ABSENT)), problems)
