"""The validation split: deterministic by seed, stratified by grade, disjoint, and its size checked."""
from collections import Counter

import pytest

from codebase.config import ConfigError
from codebase.data.idrid import grading_records, segmentation_records
from codebase.data.splits import carve, describe, split_records


def test_carve_is_deterministic_stratified_and_disjoint():
    strata = [0] * 50 + [1] * 30 + [2] * 20
    train, validation = carve(strata, 0.2, seed=7, what="grading")
    assert (train, validation) == carve(strata, 0.2, seed=7, what="grading")
    assert carve(strata, 0.2, seed=8, what="grading")[1] != validation
    assert sorted(train + validation) == list(range(100)) and not set(train) & set(validation)
    assert Counter(strata[i] for i in validation) == {0: 10, 1: 6, 2: 4}  # 20 % of every grade
    assert len(carve(strata, 7, seed=0, what="grading")[1]) == 7  # a count
    assert carve(strata, 0, seed=0, what="grading") == (list(range(100)), [])


def test_largest_remainders_keep_the_requested_size():
    strata = [0] * 5 + [1] * 3 + [2] * 2
    _, validation = carve(strata, 3, seed=0, what="grading")
    # quotas 1.5, 0.9, 0.6: one for the first grade, then the largest remainders (0.9, 0.6)
    assert len(validation) == 3 and Counter(strata[i] for i in validation) == {0: 1, 1: 1, 2: 1}


@pytest.mark.parametrize("size", [10, 0.999])
def test_a_validation_split_that_leaves_no_training_image_is_refused(size):
    with pytest.raises(ConfigError, match="data.validation"):
        carve([0] * 10, size, seed=0, what="grading")


def test_split_records_of_a_tree_are_disjoint_from_each_other_and_from_test(synthetic_root):
    splits = split_records(synthetic_root, 0.2, seed=3)
    for half, read in (("grading", grading_records), ("segmentation", segmentation_records)):
        names = {split: {record.image_path for record in records} for split, records in splits[half].items()}
        assert names["train"] | names["validation"] == {record.image_path for record in read(synthetic_root, "train")}
        assert not names["train"] & names["validation"]
        assert not (names["train"] | names["validation"]) & names["test"]
        assert names["validation"]
    recorded = describe(splits)
    assert recorded["grading"]["validation"] == [record.name for record in splits["grading"]["validation"]]
