"""What every dataset format's reader returns, and the label mappings they share.

A reader turns a tree as distributed into a `LabelledSet`: one `Record` per image (its path,
split, the project's labels it has, its lesion mask files), what was left out and why, and which
of the project's tasks the set can score. A label a set does not have is None on its records and
named in `LabelledSet.absent` with the reason, so it is reported as absent, never scored as zero.

Task keys: ``rg`` (retinopathy grade 0-4), ``mer`` (IDRiD's risk of macular edema 0-2), ``dme``
(referable diabetic macular edema 0/1, see `dme_from_mer`), and the lesions ``MA``, ``HE``,
``EX``, ``SE``, ``OD``.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from codebase.data.idrid import LESIONS, NUM_MER_CLASSES, NUM_RG_CLASSES
from codebase.data.images import ImageFileError

GRADE_KEYS = ("rg", "mer", "dme")
TASK_KEYS = GRADE_KEYS + LESIONS
GRADE_CLASSES = {"rg": NUM_RG_CLASSES, "mer": NUM_MER_CLASSES, "dme": 2}


class DatasetError(ImageFileError):
    """A tree, file name or label that is not the named format's (or a file that cannot be read);
    `problems` lists every problem found."""


# ----------------------------------------------------------------------------- label mappings
def rg_from_icdr(grade: int) -> int:
    """The project's retinopathy grade from an International Clinical DR severity grade (ICDR,
    Wilkinson et al., Ophthalmology 2003): 0 none, 1 mild NPDR, 2 moderate NPDR, 3 severe NPDR,
    4 PDR. IDRiD grades on the same scale (Porwal et al., Data 2018), so the mapping is the
    identity; every external set here grades on it (APTOS 2019 and EyePACS as their Kaggle pages
    define 0-4, Messidor-2's adjudicated grades (Krause et al., Ophthalmology 2018), DDR (Li et
    al., Information Sciences 2019; its grade 5 is "ungradable" and never reaches this function),
    FGADR (Zhou et al., IEEE TMI 2021))."""
    if not 0 <= grade < NUM_RG_CLASSES:
        raise ValueError(f"ICDR grade {grade}: expected 0-{NUM_RG_CLASSES - 1}")
    return grade


def dme_from_mer(mer: int) -> int:
    """Referable DME (0/1) from IDRiD's risk of macular edema (0 no hard exudates; 1 hard exudates
    beyond one disc diameter of the macula centre; 2 within one disc diameter; Porwal et al. 2018).

    Messidor-2's adjudicated DME is 1 for hard exudates within one disc diameter of the fovea
    (Krause et al., Ophthalmology 2018, following Gulshan et al., JAMA 2016): that is IDRiD's
    MER 2, so the comparison made is MER 2 against MER 0 or 1 ~ adjudicated DME 1 against 0. The
    macula centre and the fovea are the same point; the definitions differ in who graded and how
    (IDRiD: one grading per image; Messidor-2: three retina specialists, adjudicated)."""
    if not 0 <= mer < NUM_MER_CLASSES:
        raise ValueError(f"risk of macular edema {mer}: expected 0-{NUM_MER_CLASSES - 1}")
    return int(mer == 2)


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Record:
    """One image of a dataset. A label the image (or its set) does not have is None.

    mask_paths: {lesion: path or None} over every IDRiD lesion when the image is annotated for
    lesions (None: that lesion is not drawn in the image, or the set has no such masks; which of
    the two is `LabelledSet.lesions`), None when it is not annotated. mask_thresholds: {lesion:
    grey level} where a set's masks are anti-aliased (foreground >= the level; else non-zero)."""

    name: str
    image_path: Path
    split: str
    retinopathy_grade: int | None = None
    macular_edema_risk: int | None = None
    dme: int | None = None
    mask_paths: dict | None = None
    mask_thresholds: dict = field(default_factory=dict)

    def grade(self, key: str) -> int | None:
        return {"rg": self.retinopathy_grade, "mer": self.macular_edema_risk, "dme": self.dme}[key]


@dataclass
class LabelledSet:
    """A dataset read as distributed: its records, what was left out, and what it can score.

    grades / lesions: the task keys its labels score; absent: {task key: why it cannot be scored};
    left_out: {(split, reason): images}; test_split: the split evaluated (None: the whole set, having no
    held-out split of its own)."""

    format: str
    root: Path
    records: list[Record]
    grades: tuple[str, ...]
    lesions: tuple[str, ...]
    absent: dict[str, str]
    left_out: Counter = field(default_factory=Counter)
    test_split: str | None = None

    def evaluation_records(self) -> list[Record]:
        """The test split's records, or every record when the set has no test split."""
        if self.test_split is None:
            return list(self.records)
        return [record for record in self.records if record.split == self.test_split]

    def evaluation_left_out(self) -> dict[str, int]:
        """{reason: images} left out of the evaluated images (the test split's, or the whole set's)."""
        counts: Counter = Counter()
        for (split, reason), count in self.left_out.items():
            if self.test_split is None or split == self.test_split:
                counts[reason] += count
        return dict(counts)

    def splits(self) -> list[str]:
        return list(dict.fromkeys(record.split for record in self.records))


def lesion_masks(folders: dict[str, Path], name: str, problems: list[str]) -> dict:
    """{lesion: path or None} over every IDRiD lesion, from {lesion: folder/<file>} candidates:
    a lesion missing from ``folders`` or whose file does not exist is None."""
    masks = {}
    for lesion in LESIONS:
        path = folders.get(lesion)
        if path is not None and os.path.lexists(path) and not path.is_file():
            problems.append(f"{path}: not a readable regular file, expected the {lesion} mask of {name}")
            path = None
        masks[lesion] = path if path is not None and path.is_file() else None
    return masks


# ----------------------------------------------------------------------------- reading helpers
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*")


def safe_name(text: str, where: str, problems: list[str]) -> str | None:
    """A file name from a label file, refused when it could point outside its folder."""
    name = text.strip()
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        problems.append(f"{where}: image name {text!r} refused, expected a plain file name "
                        "(no folders, no '..', not absolute)")
        return None
    return name


def parse_grade(text: str, column: str, allowed: range, where: str, problems: list[str]) -> int | None:
    """An integer label in ``allowed``; a problem naming the column otherwise."""
    text = text.strip()
    if re.fullmatch(r"[+-]?\d+(\.0*)?", text):
        value = int(float(text))
        if value in allowed:
            return value
    problems.append(f"{where}: {column!r} is {text!r}, expected an integer {allowed.start}-{allowed.stop - 1}")
    return None


def read_table(path: Path, problems: list[str], header: tuple[str, ...] | None, delimiter: str = ",") -> list | None:
    """[(line number, {column: cell})] with a header (``header`` lists the columns needed), or
    [(line number, [cells])] without one (header None); blank lines skipped; None after a problem."""
    if not path.is_file():
        problems.append(f"{path}: missing label file" + (f", expected columns {', '.join(header)}" if header else ""))
        return None
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            if delimiter == " ":
                rows = [line.split() for line in file]
            else:
                rows = list(csv.reader(file, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(f"{path}: unreadable label file ({error})")
        return None
    numbered = [(number, row) for number, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if header is None:
        if not numbered:
            problems.append(f"{path}: empty file, expected one line per image")
            return None
        return numbered
    if not numbered:
        problems.append(f"{path}: empty file, expected a header {', '.join(header)}")
        return None
    (_, names), body = numbered[0], numbered[1:]
    names = [cell.strip() for cell in names]
    missing = [column for column in header if column not in names]
    if missing:
        problems.append(f"{path}: missing column(s) {', '.join(map(repr, missing))}; found {[n for n in names if n]}")
        return None
    if not body:
        problems.append(f"{path}: no images listed (only a header), expected one line per image")
        return None
    return [(number, {column: (row[names.index(column)] if names.index(column) < len(row) else "")
                      for column in header}) for number, row in body]


def image_file(folder: Path, name: str, where: str, problems: list[str]) -> Path | None:
    """folder/name, or the one file whose name differs only in case; a problem when neither is a file."""
    path = folder / name
    if not path.is_file() and not os.path.lexists(path) and folder.is_dir():
        matches = [other for other in folder.iterdir() if other.name.lower() == name.lower()]
        if len(matches) == 1:
            path = matches[0]
    if path.is_file():
        return path
    if os.path.lexists(path):
        problems.append(f"{where}: {path} is not a readable regular file (a broken link or a folder), "
                        "expected an image")
    else:
        problems.append(f"{where}: image {name!r} listed but {path} not found")
    return None


def require_dir(path: Path, what: str, problems: list[str]) -> bool:
    if not path.is_dir():
        problems.append(f"{path}: missing folder, expected {what}")
        return False
    return True


def require_root(root, format_name: str, expected: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: {format_name} data root not found, expected a folder holding {expected}")
    return root


def duplicate(seen: dict, name: str, where: str, problems: list[str]) -> bool:
    """True (and a problem) when ``name`` was listed before; records where it was first seen."""
    if name in seen:
        problems.append(f"{where}: duplicate image {name!r} (first at {seen[name]})")
        return True
    seen[name] = where
    return False


def finish(labelled: LabelledSet, problems: list[str]) -> LabelledSet:
    """The set, or a DatasetError listing every problem; a set without an image is a problem too."""
    if not problems and not labelled.records:
        problems.append(f"{labelled.root}: no labelled image found in this {labelled.format} tree")
    if problems:
        raise DatasetError(problems)
    return labelled
