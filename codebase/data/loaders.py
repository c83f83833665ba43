"""Seeding and data loading: one seed sets python, numpy, torch and the DataLoader workers.

`EpochLoader` draws batches that depend only on (seed, epoch, rank), so a resumed run sees
exactly the batches and augmentations of an uninterrupted one; `rng_state`/`set_rng_state`
carry the generators through a checkpoint.
"""
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from codebase.config import ConfigError
from codebase.runtime import distributed


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); each distributed rank gets seed + rank."""
    seed = seed + distributed.rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from non-negative integers, e.g. (seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed python and numpy from the seed torch gave this worker."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


class EpochLoader(DataLoader):
    """A DataLoader whose batches depend only on (seed, epoch): call `set_epoch` before each epoch.

    Training (`train=True`) shards and shuffles with `distributed.train_sampler` (one process:
    the whole set); evaluation keeps the order and shards without padding. Worker processes are
    seeded from (seed, epoch, rank) and are not persistent, so a resumed run draws exactly the
    batches and augmentations of an uninterrupted one. `fit(..., loaders=[...])` calls set_epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, seed: int,
                 num_workers: int = 0, **kwargs):
        sampler = (distributed.train_sampler(dataset, seed) if train
                   else distributed.eval_sampler(dataset))
        if train and kwargs.get("drop_last") and len(sampler) < batch_size:
            raise ConfigError(f"train.batch_size={batch_size}: the training split has {len(dataset)} images "
                              f"({len(sampler)} per process), fewer than one batch; lower train.batch_size "
                              "or data.validation")
        super().__init__(dataset, batch_size, sampler=sampler, num_workers=num_workers,
                         worker_init_fn=seed_worker, generator=make_generator(seed),
                         persistent_workers=False, **kwargs)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(derive_seed(self.seed, epoch, distributed.rank()))


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors and plain values (loads with weights_only)."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": numpy_state["state"]["key"].tolist(), "pos": numpy_state["state"]["pos"],
                  "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", np.array(numpy_state["key"], dtype=np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


