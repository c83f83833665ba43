"""The decoded-image cache: miss then hit, rebuilt when a source changes or an entry is damaged, shared by workers."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from codebase.data import cache as cache_module
from codebase.data import idrid
from codebase.data.cache import ResizedCache
from codebase.data.image_datasets import GradingDataset, SegmentationDataset

SIZE = (64, 96)  # (H, W)


@pytest.fixture
def tree(synthetic_root, tmp_path):
    return Path(shutil.copytree(synthetic_root, tmp_path / "data", ignore=shutil.ignore_patterns(".cache")))


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npy"))


def test_cache_miss_then_hit(synthetic_root, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    dataset = SegmentationDataset(synthetic_root, "train", SIZE, cache_dir=folder)
    first = dataset[0]
    record = dataset.records[0]
    written = entries(folder)
    assert len(written) == 1 + sum(p is not None for p in record.mask_paths.values())
    assert all(np.load(p).dtype == np.uint8 for p in written)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a source file on a cache hit")

    monkeypatch.setattr(cache_module, "read_image", no_decoding)  # where the cache decodes
    monkeypatch.setattr(cache_module, "read_mask_image", no_decoding)
    second = dataset[0]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["masks"], second["masks"])
    assert entries(folder) == written
    assert not list(folder.glob(".tmp-*"))


def test_cache_is_rebuilt_when_a_source_changes(tree, tmp_path):
    folder = tmp_path / "cache"
    dataset = GradingDataset(tree, "train", SIZE, cache_dir=folder)
    before = dataset[0]["image"]
    (old,) = entries(folder)
    path = dataset.records[0].image_path
    Image.open(dataset.records[1].image_path).save(path, quality=90)  # new content, new mtime and size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    after = dataset[0]["image"]
    assert not torch.equal(before, after)
    (new,) = entries(folder)
    assert new != old  # the stale entry was replaced, not kept beside the new one
    np.testing.assert_array_equal(np.load(new), ResizedCache(None).image(path, SIZE))


def test_cache_keys_on_size_and_default_location(tree):
    dataset = SegmentationDataset(tree, "test", SIZE)
    dataset[0]
    SegmentationDataset(tree, "test", (32, 48))[0]
    assert {p.name.split(".")[2] for p in entries(tree / ".cache")} == {"64x96", "32x48"}


def test_damaged_cache_entry_is_rebuilt(synthetic_root, tmp_path):
    cache = ResizedCache(tmp_path)
    path = idrid.grading_records(synthetic_root, "test")[0].image_path
    expected = cache.image(path, SIZE)
    (entry,) = entries(tmp_path)
    entry.write_bytes(entry.read_bytes()[:40])
    np.testing.assert_array_equal(cache.image(path, SIZE), expected)


def test_no_cache_mode_writes_nothing(tree):
    dataset = SegmentationDataset(tree, "train", SIZE, cache_dir=False)
    dataset[0]
    assert not (tree / ".cache").exists()


def test_workers_share_a_cold_cache(synthetic_root, tmp_path):
    folder = tmp_path / "cache"
    dataset = SegmentationDataset(synthetic_root, "train", SIZE, cache_dir=folder)
    order = [i for i in range(len(dataset)) for _ in range(2)]  # both workers decode and write each entry at once
    loader = DataLoader(dataset, batch_size=1, sampler=order, num_workers=2)
    parallel = [batch["masks"][0] for batch in loader]
    assert not list(folder.glob(".tmp-*"))
    serial = [dataset[i]["masks"] for i in order]
    assert torch.equal(torch.stack(parallel), torch.stack(serial))
    uncached = ResizedCache(None).mask(dataset.records[0].mask_paths["OD"], SIZE)
    np.testing.assert_array_equal(uncached, serial[0][idrid.LESIONS.index("OD")].numpy())
    assert cache_module.ResizedCache(folder).entry_path("mask", dataset.records[0].mask_paths["OD"], SIZE,
                                                        (dataset.records[0].image_path,)).is_file()
