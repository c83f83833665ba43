"""Data for the multi-task model: task targets, and the two loaders one optimizer step draws from.

A grading sample carries classification targets, a segmentation sample segmentation targets; no
IDRiD image has both. Which target a task trains on follows from its name:

- ``classification_<label>``: a grade of the grading CSV (``rg``, ``mer``) or one derived from
  them (``referable``: RG >= 2, the usual referral threshold).
- ``segmentation_<target>``: a lesion mask (``ma``, ``he``, ``ex``, ``se``, ``od``) or a union of
  them (``red``: MA or HE; ``bright``: EX or SE; ``lesions``: any of the four lesions).

A new task is one entry in ``task_specs`` when its target is listed here; a new kind of target is
one entry in these tables.
"""
import torch
from torch.utils.data import DataLoader, Sampler

from codebase.datasets import GradingDataset, SegmentationDataset
from codebase.harness import ConfigError, derive_seed, seed_worker
from codebase.idrid import LESIONS

CLASSIFICATION_TARGETS = {
    "rg": lambda rg, mer: rg,
    "mer": lambda rg, mer: mer,
    "referable": lambda rg, mer: (rg >= 2).long(),
}
SEGMENTATION_TARGETS = {code.lower(): (code,) for code in LESIONS}
SEGMENTATION_TARGETS.update({"red": ("MA", "HE"), "bright": ("EX", "SE"), "lesions": ("MA", "HE", "EX", "SE")})


def _target_key(task):
    kind, key = task.split("_", 1)
    table = CLASSIFICATION_TARGETS if kind == "classification" else SEGMENTATION_TARGETS
    if key not in table:
        raise ValueError(f"task {task!r}: no {kind} target named {key!r}; known: "
                         f"{', '.join(kind + '_' + k for k in table)} (add one to codebase/dataset.py)")
    return key


def validate_tasks(task_specs):
    """Check every task has a target and a sensible output count; raise ValueError naming the task."""
    for task, outputs in task_specs.items():
        key = _target_key(task)
        if task.startswith("segmentation_") and outputs != 1:
            raise ValueError(f"task_specs.{task}: segmentation targets are one binary mask, so 1 output, got {outputs}")
        if task.startswith("classification_"):
            needed = {"rg": 5, "mer": 3, "referable": 2}[key]
            if outputs != needed:
                raise ValueError(f"task_specs.{task}: the {key} target has {needed} classes, got {outputs}")


def classification_targets(tasks, rg, mer):
    """Grade tensors [B] -> {task: class index tensor [B]}."""
    return {task: CLASSIFICATION_TARGETS[_target_key(task)](rg, mer) for task in tasks}


def segmentation_targets(tasks, masks):
    """Lesion masks uint8 [B, 5, H, W] (LESIONS order) -> {task: uint8 [B, 1, H, W]}."""
    targets = {}
    for task in tasks:
        channels = [LESIONS.index(code) for code in SEGMENTATION_TARGETS[_target_key(task)]]
        targets[task] = masks[:, channels].amax(dim=1, keepdim=True)
    return targets


def build_datasets(root, grading_size, segmentation_size, crop_size=None, cache_dir=None):
    """{"grading": {"train", "test"}, "segmentation": {"train", "test"}} datasets."""
    return {
        "grading": {split: GradingDataset(root, split, grading_size, train=split == "train", cache_dir=cache_dir)
                    for split in ("train", "test")},
        "segmentation": {split: SegmentationDataset(root, split, segmentation_size, train=split == "train",
                                                    crop_size=crop_size if split == "train" else None,
                                                    cache_dir=cache_dir)
                         for split in ("train", "test")},
    }


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
