"""Datasets, transforms and the on-disk cache."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from codebase.data import idrid
from codebase.data.cache import ResizedCache, load_resized_mask
from codebase.data.image_datasets import UNKNOWN_CAMERA, GradingDataset, SegmentationDataset
from codebase.data.provenance import image_records
from codebase.data.images import ImageFileError
from codebase.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
)

SIZE = (64, 96)  # (H, W)


@pytest.fixture
def tree(synthetic_root, tmp_path):
    return Path(shutil.copytree(synthetic_root, tmp_path / "data", ignore=shutil.ignore_patterns(".cache")))


def test_grading_items(synthetic_root, tmp_path):
    dataset = GradingDataset(synthetic_root, "train", SIZE, train=False, cache_dir=tmp_path)
    item = dataset[0]
    assert set(item) == {"image", "rg", "mer", "name", "camera"}
    assert item["image"].shape == (3, *SIZE) and item["image"].dtype == torch.float32
    assert type(item["image"]) is torch.Tensor
    assert item["rg"].dtype == torch.int64 and item["rg"].shape == () and item["mer"].dtype == torch.int64
    assert item["name"] == "IDRiD_001"
    labels = dataset.labels
    assert labels.shape == (len(dataset), 2) and labels.dtype == np.int64
    records = idrid.grading_records(synthetic_root, "train")
    assert labels.tolist() == [[r.retinopathy_grade, r.macular_edema_risk] for r in records]
    assert (item["rg"].item(), item["mer"].item()) == tuple(labels[0])
    # ImageNet normalisation of the eval preset, exactly
    raw = ResizedCache(tmp_path).image(records[0].image_path, SIZE)
    expected = (torch.from_numpy(raw).permute(2, 0, 1) / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
        / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(item["image"], expected)


def test_segmentation_items(synthetic_root, tmp_path):
    dataset = SegmentationDataset(synthetic_root, "test", SIZE, train=False, crop_size=(32, 32), cache_dir=tmp_path)
    assert len(dataset) == 2
    for index, record in enumerate(dataset.records):
        item = dataset[index]
        assert set(item) == {"image", "masks", "name", "camera"} and item["name"] == record.name
        assert item["image"].shape == (3, *SIZE)  # eval: no crop
        assert item["masks"].shape == (5, *SIZE) and item["masks"].dtype == torch.uint8
        assert set(item["masks"].unique().tolist()) <= {0, 1}
        for channel, lesion in enumerate(idrid.LESIONS):
            path = record.mask_paths[lesion]
            expected = np.zeros(SIZE, np.uint8) if path is None else load_resized_mask(path, SIZE)
            np.testing.assert_array_equal(item["masks"][channel].numpy(), expected)
    assert item["masks"][idrid.LESIONS.index("OD")].sum() > 0


def test_items_carry_the_camera_synthetic_json_records_and_none_where_unknown(tree, tmp_path):
    records = image_records(tree)
    grading = GradingDataset(tree, "test", SIZE, cache_dir=tmp_path / "cache")
    expected = [records[r.image_path.relative_to(tree).as_posix()]["camera"] for r in grading.records]
    assert [grading[i]["camera"] for i in range(len(grading))] == expected and all(expected)
    segmentation = SegmentationDataset(tree, "test", SIZE, cache_dir=tmp_path / "cache")
    first = segmentation.records[0].image_path.relative_to(tree).as_posix()
    assert segmentation[0]["camera"] == records[first]["camera"]
    batch = next(iter(DataLoader(grading, batch_size=2)))
    assert batch["camera"] == expected[:2]  # strings batch as a list
    (tree / "synthetic.json").unlink()  # a real tree: no camera known
    assert GradingDataset(tree, "test", SIZE, cache_dir=tmp_path / "cache").cameras == [UNKNOWN_CAMERA] * len(grading)


def test_absent_mask_gives_an_empty_channel(synthetic_root, tmp_path):
    for split in idrid.SPLITS:
        dataset = SegmentationDataset(synthetic_root, split, SIZE, cache_dir=tmp_path)
        for index, record in enumerate(dataset.records):
            absent = [i for i, k in enumerate(idrid.LESIONS) if record.mask_paths[k] is None]
            if absent:
                assert dataset[index]["masks"][absent].sum() == 0
                return
    pytest.fail("the synthetic tree should have an absent mask")


def test_train_preset_crops_and_batches(synthetic_root, tmp_path):
    torch.manual_seed(0)
    dataset = SegmentationDataset(synthetic_root, "train", SIZE, train=True, crop_size=(48, 80), cache_dir=tmp_path)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, 48, 80) and batch["masks"].shape == (4, 5, 48, 80)
    assert batch["masks"].dtype == torch.uint8 and batch["masks"].max() <= 1
    assert batch["name"] == ["IDRiD_01", "IDRiD_02", "IDRiD_03", "IDRiD_04"]
    grading = GradingDataset(synthetic_root, "test", SIZE, train=True, cache_dir=tmp_path)
    batch = next(iter(DataLoader(grading, batch_size=5)))
    assert batch["image"].shape == (5, 3, *SIZE) and batch["rg"].shape == (5,)


def test_bad_sizes_are_refused(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="crop_size"):
        SegmentationDataset(synthetic_root, "train", SIZE, train=True, crop_size=(80, 80), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        GradingDataset(synthetic_root, "train", 64, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- transforms


# ----------------------------------------------------------------------------- cache


def test_mask_size_mismatch_is_reported(tree, tmp_path):
    record = idrid.segmentation_records(tree, "train")[0]
    Image.new("L", (50, 40)).save(record.mask_paths["OD"])
    dataset = SegmentationDataset(tree, "train", SIZE, cache_dir=tmp_path)
    with pytest.raises(ImageFileError, match="expected 192x128"):
        dataset[0]


