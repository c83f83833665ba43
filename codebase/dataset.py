"""Data for the multi-task model: its datasets, and the two loaders one optimizer step draws from.

A grading sample carries the grades, a segmentation sample the lesion masks; no IDRiD image has
both. Which of them a task trains on is the task's business (codebase/tasks.py).
"""
import torch
from torch.utils.data import DataLoader, Sampler

from codebase.config import ConfigError
from codebase.data.idrid import LESIONS, segmentation_records
from codebase.data.image_datasets import GradingDataset, SegmentationDataset
from codebase.data.loaders import EpochLoader, derive_seed, seed_worker
from codebase.data.patches import patch_dataset, working_resolution
from codebase.tasks import on_side, parse_tasks


def build_datasets(root, grading_size, segmentation_size, crop_size=None, cache_dir=None, splits=None,
                   patches=None, lesions=LESIONS):
    """{"grading": {split: dataset}, "segmentation": {split: dataset}}.

    splits: {side: {"train"|"validation"|"test": [record]}} (codebase.data.splits); a split without
    images is left out. None: IDRiD's train and test splits as distributed.
    patches: an enabled ``data.patches`` section (codebase.data.patches): the segmentation training
    set is then lesion-aware crops (centred on ``lesions``) of images kept at its working resolution,
    and validation and test segmentation images are whole at that resolution (segmentation_size and
    crop_size are unused); grading keeps whole resized images either way.
    """
    if splits is None:
        splits = {side: {"train": None, "test": None} for side in ("grading", "segmentation")}
    segmentation = {split: records if records is not None else segmentation_records(root, split)
                    for split, records in splits["segmentation"].items()}
    if patches:
        segmentation_size = working_resolution(patches, [r for records in segmentation.values() for r in records])

    def segmentation_dataset(split, records):
        if patches and split == "train":
            return patch_dataset(root, patches, records, cache_dir, lesions)
        return SegmentationDataset(root, split, segmentation_size, train=split == "train",
                                   crop_size=crop_size if split == "train" else None, cache_dir=cache_dir,
                                   records=records)

    return {
        "grading": {split: GradingDataset(root, split, grading_size, train=split == "train",
                                          cache_dir=cache_dir, records=records)
                    for split, records in splits["grading"].items() if records is None or records},
        "segmentation": {split: segmentation_dataset(split, records)
                         for split, records in segmentation.items() if records},
    }


def build_loaders(config, splits, device, rank=0, world_size=1):
    """(datasets, streams, eval_loaders) of a multi-task run from its config and splits
    (codebase.data.splits): `build_datasets`; {side: BatchStream} of the training sets (this
    process's share of each batch); {"validation"|"test": {side: EpochLoader}} of the splits a side
    has images in."""
    data, train = config["data"], config["train"]
    patches = data["patches"] if data["patches"]["enabled"] else None
    lesions = [task.key for task in on_side(parse_tasks(config["model"]["task_specs"]), "segmentation")
               if task.key in LESIONS]  # IDRiD's own lesions (a derived target has no mask file)
    datasets = build_datasets(data["root"], data["grading_size"], data["segmentation_size"], data["crop_size"],
                              data["cache_dir"], splits, patches, lesions or LESIONS)
    options = {"num_workers": data["num_workers"], "pin_memory": data["pin_memory"] and device.type == "cuda"}
    persistent = data["persistent_workers"] and data["num_workers"] > 0
    streams = {side: BatchStream(datasets[side]["train"], train["batch_size"], config["seed"], rank, world_size,
                                 persistent_workers=persistent, **options)
               for side in ("grading", "segmentation")}
    eval_loaders = {split: {side: EpochLoader(datasets[side][split], train["eval_batch_size"], train=False,
                                              seed=config["seed"], **options)
                            for side in ("grading", "segmentation") if split in datasets[side]}
                    for split in ("validation", "test")}
    return datasets, streams, eval_loaders


class StreamSampler(Sampler):
    """Endless shuffled indices: pass n of epoch e is a permutation seeded by (seed, e, n).

    Each epoch starts a fresh pass, so what an epoch sees depends only on the seed and the epoch
    number, and a resumed run sees the batches an uninterrupted one would. Under several
    processes each rank takes every world_size-th index of the same permutation.
    """

    def __init__(self, size, seed, rank=0, world_size=1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        passes = 0
        while True:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, passes))
            yield from torch.randperm(self.size, generator=generator)[self.rank::self.world_size].tolist()
            passes += 1


class BatchStream:
    """Endless batches of one dataset for the multi-task loop; ``epoch(e)`` starts epoch e's stream.

    Worker processes are seeded from (seed, epoch) too, so augmentations repeat exactly on resume.
    """

    def __init__(self, dataset, batch_size, seed, rank=0, world_size=1, **loader_kwargs):
        if len(dataset) < batch_size * world_size:
            raise ConfigError(f"train.batch_size={batch_size}: {type(dataset).__name__} has only {len(dataset)} "
                              f"images, fewer than one batch per process x {world_size} process(es); lower it")
        self.seed = seed
        self.sampler = StreamSampler(len(dataset), seed, rank, world_size)
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size, sampler=self.sampler, drop_last=True,
                                 generator=self.generator, worker_init_fn=seed_worker, **loader_kwargs)

    def epoch(self, epoch):
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(derive_seed(self.seed, epoch, 7919))
        return iter(self.loader)
