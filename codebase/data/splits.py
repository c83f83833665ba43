"""Train / validation / test: a validation split carved from IDRiD's training split.

IDRiD ships a training and a test split. Every evaluation during training (model selection, early
stopping) runs on a validation split carved deterministically, by the run's seed, from the
training split of each side: grading images stratified by retinopathy grade, segmentation images
by image. ``data.validation`` sets its size per side: a fraction in (0, 1), a whole number of
images (>= 1), or 0 for none. The test split is evaluated once, at the end. The images of each
split are recorded in the run folder (splits.json).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from codebase.config import ConfigError
from codebase.data import idrid
from codebase.data.loaders import derive_seed

SPLITS_FILE = "splits.json"
_SIDE_TAGS = {"grading": 1, "segmentation": 2}  # separate random streams for the two sides


def validation_count(size, total: int, what: str) -> int:
    """How many of ``total`` images the validation size asks for; ConfigError when it leaves no
    training image or asks for more images than there are."""
    if size == 0:
        return 0
    count = round(size * total) if isinstance(size, float) and size < 1 else int(size)
    count = max(count, 1)
    if count >= total:
        raise ConfigError(f"data.validation={size!r}: the {what} training split has {total} images, so at most "
                          f"{total - 1} can go to validation (a fraction below 1, or fewer images)")
    return count


def carve(strata: list, size, seed: int, what: str) -> tuple[list[int], list[int]]:
    """(train indices, validation indices), both sorted: ``size`` images (see validation_count) drawn
    from each stratum in proportion to its share (largest remainders), reproducibly from ``seed``."""
    count = validation_count(size, len(strata), what)
    if count == 0:
        return list(range(len(strata))), []
    members = defaultdict(list)
    for index, stratum in enumerate(strata):
        members[stratum].append(index)
    keys = sorted(members)
    quotas = np.array([count * len(members[key]) / len(strata) for key in keys])
    taken = np.floor(quotas).astype(int)
    for position in np.argsort(-(quotas - taken), kind="stable")[:count - taken.sum()]:
        taken[position] += 1
    generator = np.random.default_rng(seed)
    validation = []
    for key, number in zip(keys, taken):
        validation += generator.choice(members[key], size=number, replace=False).tolist()
    validation = sorted(validation)
    chosen = set(validation)
    return [index for index in range(len(strata)) if index not in chosen], validation


def split_records(root, size, seed: int, sides=("grading", "segmentation")) -> dict:
    """{side: {"train": [record], "validation": [record], "test": [record]}} for the sides asked."""
    root = Path(root)
    splits = {}
    for side in sides:
        read = idrid.grading_records if side == "grading" else idrid.segmentation_records
        training = read(root, "train")
        testing = read(root, "test")
        idrid.check_files(training + testing)  # bad files found before training, not when first read
        strata = ([record.retinopathy_grade for record in training] if side == "grading"
                  else [0] * len(training))
        train, validation = carve(strata, size, derive_seed(seed, _SIDE_TAGS[side]), f"{side}")
        splits[side] = {"train": [training[i] for i in train], "validation": [training[i] for i in validation],
                        "test": testing}
    return splits


def describe(splits: dict) -> dict:
    """The image names of each split, for splits.json."""
    return {side: {split: [record.name for record in records] for split, records in parts.items()}
            for side, parts in splits.items()}


