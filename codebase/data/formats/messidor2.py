"""Messidor-2 with the adjudicated labels (Krause et al., Ophthalmology 2018) as distributed:
``messidor_data.csv`` with ``image_id`` (the file's name with its extension; .png, .jpg and .JPG
occur), ``adjudicated_dr_grade`` (0-4), ``adjudicated_dme`` (0/1) and ``adjudicated_gradable``
(0/1), the images in ``IMAGES/`` beside it.

Rows of ungradable images (gradable 0, their grades empty) are left out and counted. The whole set
is scored (it has no split). Labels: the adjudicated DR grade is ICDR -> RG by `rg_from_icdr`; the
adjudicated DME is referable DME (hard exudates within one disc diameter of the fovea), scored as
the ``dme`` task against IDRiD's MER 2 (`dme_from_mer` states the comparison). IDRiD's three-level
MER itself is absent (the set does not say whether exudates lie further away); no lesion masks.
"""
from __future__ import annotations

from collections import Counter

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

NAME = "messidor2"
TITLE = "Messidor-2"
LABELS_FILE = "messidor_data.csv"
IMAGES_DIR = "IMAGES"
COLUMNS = ("image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable")
UNGRADABLE = "ungradable (adjudicated_gradable 0)"
ABSENT = {"mer": "Messidor-2 grades referable DME (0/1), not IDRiD's three-level risk: scored as dme",
          **{lesion: "Messidor-2 has no lesion masks" for lesion in LESIONS}}


def detect(root) -> bool:
    return (root / LABELS_FILE).is_file()


def read(root) -> LabelledSet:
    root = require_root(root, TITLE, f"{LABELS_FILE} and {IMAGES_DIR}/")
    problems: list[str] = []
    records, seen, left_out = [], {}, Counter()
    name_column, dr_column, dme_column, gradable_column = COLUMNS
    rows = read_table(root / LABELS_FILE, problems, COLUMNS)
    if require_dir(root / IMAGES_DIR, "the images named in image_id", problems) and rows:
        for line, row in rows:
            where = f"{root / LABELS_FILE}, line {line}"
            name = safe_name(row[name_column], where, problems)
            gradable = parse_grade(row[gradable_column], gradable_column, range(2), where, problems)
            if name is None or gradable is None or duplicate(seen, name, where, problems):
                continue
            if gradable == 0:
                left_out["all", UNGRADABLE] += 1
                continue
            grade = parse_grade(row[dr_column], dr_column, range(5), where, problems)
            dme = parse_grade(row[dme_column], dme_column, range(2), where, problems)
            path = image_file(root / IMAGES_DIR, name, where, problems)
            if path is not None and grade is not None and dme is not None:
                records.append(Record(name, path, "all", rg_from_icdr(grade), dme=dme))
    return finish(LabelledSet(NAME, root, records, ("rg", "dme"), (), dict(ABSENT), left_out), problems)
