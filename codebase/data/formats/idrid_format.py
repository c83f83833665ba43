"""IDRiD (codebase.data.idrid) seen as a `LabelledSet`: the in-domain set, its test split scored.

Every task is scored: RG and MER from the grading CSVs, DME derived from MER (`dme_from_mer`, so
the in-domain row has the counterpart of Messidor-2's DME), and the five lesions from the
segmentation set (a missing mask file: the lesion is absent from that image, as IDRiD says).
"""
from __future__ import annotations

from pathlib import Path

from codebase.data import idrid
from codebase.data.formats.base import LabelledSet, Record, dme_from_mer, finish

NAME = "idrid"
TITLE = "IDRiD"


def detect(root) -> bool:
    return idrid.tree_present(root)


def read(root) -> LabelledSet:
    """Both sides and both splits; IDRiDError (a DatasetError's sibling) lists the problems of the first
    part that has any."""
    records = []
    for split in idrid.SPLITS:
        for record in idrid.grading_records(root, split):
            records.append(Record(f"grading/{split}/{record.name}", record.image_path, split,
                                  record.retinopathy_grade, record.macular_edema_risk,
                                  dme_from_mer(record.macular_edema_risk)))
        for record in idrid.segmentation_records(root, split):
            records.append(Record(f"segmentation/{split}/{record.name}", record.image_path, split,
                                  mask_paths=dict(record.mask_paths)))
    return finish(LabelledSet(NAME, Path(root), records, ("rg", "mer", "dme"), idrid.LESIONS, {}, test_split="test"),
                  [])
