"""Datasets, transforms and the on-disk cache."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from codebase.data import cache as cache_module
from codebase.data import idrid
from codebase.data.cache import ResizedCache, load_resized_mask
from codebase.data.image_datasets import GradingDataset, SegmentationDataset
from codebase.data.images import ImageFileError
from codebase.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GaussianBlur3,
    MasksAsBits,
    RandomHueShift,
    eval_transforms,
    to_tv_tensors,
    train_transforms,
)

SIZE = (64, 96)  # (H, W)


@pytest.fixture
def tree(synthetic_root, tmp_path):
    return Path(shutil.copytree(synthetic_root, tmp_path / "data", ignore=shutil.ignore_patterns(".cache")))


def test_grading_items(synthetic_root, tmp_path):
    dataset = GradingDataset(synthetic_root, "train", SIZE, train=False, cache_dir=tmp_path)
    item = dataset[0]
    assert set(item) == {"image", "rg", "mer", "name"}
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
        assert set(item) == {"image", "masks", "name"} and item["name"] == record.name
        assert item["image"].shape == (3, *SIZE)  # eval: no crop
        assert item["masks"].shape == (5, *SIZE) and item["masks"].dtype == torch.uint8
        assert set(item["masks"].unique().tolist()) <= {0, 1}
        for channel, lesion in enumerate(idrid.LESIONS):
            path = record.mask_paths[lesion]
            expected = np.zeros(SIZE, np.uint8) if path is None else load_resized_mask(path, SIZE)
            np.testing.assert_array_equal(item["masks"][channel].numpy(), expected)
    assert item["masks"][idrid.LESIONS.index("OD")].sum() > 0


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
def square_sample(height=64, width=96):
    """A black image with a white square, and a 5-lesion mask with the same square in channel 2."""
    image = np.zeros((height, width, 3), np.uint8)
    masks = np.zeros((5, height, width), np.uint8)
    image[10:26, 12:36] = 255
    masks[2, 10:26, 12:36] = 1
    return image, masks


def test_masks_follow_flips_and_affine():
    image, masks = square_sample()
    transform = train_transforms()
    flipped_h = flipped_v = 0
    for seed in range(30):
        torch.manual_seed(seed)
        out = transform(to_tv_tensors(image, masks))
        picture, mask = out["image"], out["masks"]
        assert mask.dtype == torch.uint8 and set(mask.unique().tolist()) <= {0, 1}
        assert mask[[0, 1, 3, 4]].sum() == 0
        grey = picture.mean(0)
        bright = grey > (grey.max() + grey.min()) / 2  # where the square went in the image
        square = mask[2].bool()
        iou = (bright & square).sum() / (bright | square).sum()
        assert iou > 0.75, (seed, float(iou))
        ys, xs = torch.nonzero(square, as_tuple=True)
        flipped_h += xs.float().mean() > 48
        flipped_v += ys.float().mean() > 32
    assert 5 < flipped_h < 25 and 5 < flipped_v < 25  # both flips happen, each about half the time


def test_affine_moves_masks_with_the_image():
    image, masks = square_sample()
    transform = train_transforms()
    moved = 0
    for seed in range(20):
        torch.manual_seed(seed)
        mask = transform(to_tv_tensors(image, masks))["masks"][2]
        flips = [mask, mask.flip(-1), mask.flip(-2), mask.flip(-1).flip(-2)]
        moved += min(int((m != torch.from_numpy(masks[2])).sum()) for m in flips) > 0
    assert moved >= 5  # the affine (applied half the time) changes the mask beyond flips


def test_hue_shift_keeps_grey_and_masks():
    image = torch.rand(3, 8, 10)
    image[:, :2] = 0.5  # a grey band
    masks = tv_tensors.Mask(torch.ones(5, 8, 10, dtype=torch.uint8))
    torch.manual_seed(0)
    out = RandomHueShift(0.1)({"image": tv_tensors.Image(image), "masks": masks})
    assert isinstance(out["image"], tv_tensors.Image) and out["masks"] is masks
    torch.testing.assert_close(out["image"][:, :2], image[:, :2])
    assert not torch.allclose(out["image"][:, 2:], image[:, 2:])
    assert 0 <= out["image"].min() and out["image"].max() <= 1
    torch.testing.assert_close(out["image"].sum(0), image.sum(0).clamp(max=3), atol=0.05, rtol=0)  # keeps brightness


def test_eval_preset_only_normalises():
    image, masks = square_sample()
    out = eval_transforms()(to_tv_tensors(image, masks))
    assert torch.equal(out["masks"].as_subclass(torch.Tensor), torch.from_numpy(masks))
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out["image"][:, 15, 20], white)


# ----------------------------------------------------------------------------- cache
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


def test_mask_size_mismatch_is_reported(tree, tmp_path):
    record = idrid.segmentation_records(tree, "train")[0]
    Image.new("L", (50, 40)).save(record.mask_paths["OD"])
    dataset = SegmentationDataset(tree, "train", SIZE, cache_dir=tmp_path)
    with pytest.raises(ImageFileError, match="expected 192x128"):
        dataset[0]


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


def test_blur_equals_torchvisions_gaussian_blur():
    image = tv_tensors.Image(torch.rand(3, 20, 30))
    for seed in range(3):
        torch.manual_seed(seed)
        ours = GaussianBlur3(sigma=(0.1, 1.0))(image)
        torch.manual_seed(seed)
        theirs = v2.GaussianBlur(kernel_size=3, sigma=(0.1, 1.0))(image)
        assert isinstance(ours, tv_tensors.Image)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    masks = tv_tensors.Mask(torch.ones(5, 20, 30, dtype=torch.uint8))
    assert GaussianBlur3()({"image": image, "masks": masks})["masks"] is masks


def test_masks_carried_as_bits_come_out_as_each_mask_transformed_alone():
    """The train preset moves the five masks as bits of one channel; the result must equal the same
    steps (same random draws) applied to the five masks themselves."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    masks = (rng.random((5, 48, 64)) > 0.7).astype(np.uint8)
    packed = train_transforms(crop_size=(40, 56))
    plain = v2.Compose(list(packed.transforms))
    assert isinstance(packed, MasksAsBits) and type(plain) is v2.Compose
    for seed in range(12):
        torch.manual_seed(seed)
        ours = packed(to_tv_tensors(image, masks))
        torch.manual_seed(seed)
        theirs = plain(to_tv_tensors(image, masks))
        assert ours["masks"].dtype == torch.uint8 and ours["masks"].shape == (5, 40, 56)
        assert torch.equal(ours["masks"], theirs["masks"]), seed
        assert torch.equal(ours["image"], theirs["image"]), seed
