"""The multi-task model's data: its datasets, endless batch streams that depend only on (seed, epoch),
and the loaders a run builds from its config and splits."""
import torch
from synthetic_tree import SYNTHETIC_TREE

import train_mlt_model
from codebase.config import parse_cli
from codebase.data.splits import split_records
from codebase.dataset import StreamSampler, build_loaders


def indices(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_stream_sampler_depends_on_seed_and_epoch_and_shards_by_rank():
    first, again = StreamSampler(10, seed=3), StreamSampler(10, seed=3)
    first.set_epoch(2), again.set_epoch(2)
    assert indices(first, 25) == indices(again, 25)  # endless: the third pass is drawn too
    assert sorted(indices(first, 10)) == list(range(10))  # each pass a permutation
    again.set_epoch(3)
    assert indices(again, 10) != indices(first, 10)
    ranks = [StreamSampler(10, seed=3, rank=rank, world_size=2) for rank in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(2)
    assert sorted(indices(ranks[0], 5) + indices(ranks[1], 5)) == list(range(10))


def test_build_loaders_gives_both_streams_and_the_evaluation_splits(synthetic_root):
    config = parse_cli(train_mlt_model.CONFIG, ["--data-root", str(synthetic_root), "--set", "data.validation=2",
                                                "--set", "train.batch_size=2", "--set", "data.grading_size=64,96",
                                                "--set", "data.segmentation_size=64,96", "--set", "data.num_workers=0"])
    splits = split_records(synthetic_root, 2, 0)
    datasets, streams, loaders = build_loaders(config, splits, torch.device("cpu"))
    grading, segmentation = next(streams["grading"].epoch(1)), next(streams["segmentation"].epoch(1))
    assert grading["image"].shape == (2, 3, 64, 96) and set(grading) >= {"rg", "mer"}
    assert segmentation["masks"].shape == (2, 5, 64, 96)
    assert {split: set(sides) for split, sides in loaders.items()} == {
        "validation": {"grading", "segmentation"}, "test": {"grading", "segmentation"}}
    assert len(loaders["test"]["grading"].dataset) == SYNTHETIC_TREE["grade_test"]
    assert len(datasets["grading"]["train"]) == SYNTHETIC_TREE["grade_train"] - 2
