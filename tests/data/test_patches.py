"""Patch dataset: memory-mapped cache, decode counts, invalidation, lesion-aware sampling, alignment."""
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from codebase.config import ConfigError
from codebase.data import cache, idrid
from codebase.data.cache import ResizedCache
from codebase.data.images import read_image, read_mask, read_mask_image
from codebase.data.patches import (
    PATCH_SETTINGS,
    PatchSegmentationDataset,
    lesion_points,
    pack_masks,
    patch_dataset,
    unpack_masks,
    working_resolution,
)
from codebase.data.transforms import IMAGENET_MEAN, IMAGENET_STD

HEIGHT, WIDTH = 96, 128


def write_tree(root, images):
    """A segmentation 'train' split: images {name: (uint8 [H, W, 3], {lesion: 0/1 [H, W]})}."""
    for folder in [idrid.segmentation_image_dir(root, "train")] + [
            idrid.segmentation_mask_dir(root, "train", lesion) for lesion in idrid.LESIONS]:
        folder.mkdir(parents=True, exist_ok=True)
    for name, (image, masks) in images.items():
        Image.fromarray(image).save(idrid.segmentation_image_path(root, "train", name), quality=95)
        for lesion, mask in masks.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(idrid.segmentation_mask_path(root, "train", name, lesion))
    return root


def noise_image(seed):
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def dot(y, x, size=2):
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[y:y + size, x:x + size] = 1
    return mask


def test_bits_and_points_round_trip():
    masks = (np.random.default_rng(0).random((5, 20, 30)) < 0.1).astype(np.uint8)
    bits = pack_masks(masks)
    assert bits.dtype == np.uint8 and bits.shape == (20, 30)
    np.testing.assert_array_equal(unpack_masks(bits), masks)
    points = lesion_points(bits, max_points=10_000)
    for lesion in range(5):
        ys, xs = np.nonzero(masks[lesion])
        np.testing.assert_array_equal(points[points[:, 0] == lesion, 1:], np.stack([ys, xs], 1))
    few = lesion_points(bits, max_points=3)
    assert Counter(few[:, 0].tolist()) == {lesion: 3 for lesion in range(5)}
    assert all(masks[lesion, y, x] for lesion, y, x in few)


def count_decodes(monkeypatch):
    counts = Counter()

    def counting(reader):
        def read(path, *args, **kwargs):
            counts[os.path.basename(path)] += 1
            return reader(path, *args, **kwargs)
        return read

    monkeypatch.setattr(cache, "read_image", counting(read_image))  # where the cache decodes
    monkeypatch.setattr(cache, "read_mask_image", counting(read_mask_image))
    return counts


def test_one_decode_per_file_then_memory_maps_reused_by_a_second_dataset(synthetic_root, tmp_path, monkeypatch):
    counts = count_decodes(monkeypatch)
    dataset = PatchSegmentationDataset(synthetic_root, "train", crop_size=(48, 64), crops_per_image=3,
                                       cache_dir=tmp_path)  # native size (128x192): no image_size
    for item in range(len(dataset)):  # three crops of every image
        sample = dataset[item]
        assert sample["image"].shape == (3, 48, 64) and sample["masks"].shape == (5, 48, 64)
    files = [p.name for r in dataset.records for p in (r.image_path, *r.mask_paths.values()) if p is not None]
    assert counts == Counter(files)  # every image and mask file decoded exactly once
    counts.clear()
    again = PatchSegmentationDataset(synthetic_root, "train", crop_size=(48, 64), cache_dir=tmp_path)
    image, bits, points = again.arrays(0)
    assert isinstance(image, np.memmap) and isinstance(bits, np.memmap) and isinstance(points, np.memmap)
    assert image.shape == (128, 192, 3) and bits.shape == (128, 192)
    for item in range(len(again)):
        again[item]
    assert not counts  # no second decode
    record = again.records[0]
    np.testing.assert_array_equal(image, ResizedCache(None).image(record.image_path, (128, 192)))
    assert ResizedCache(tmp_path).entry_path("image", record.image_path, (128, 192)).is_file()  # shared entry
    expected = np.zeros((5, 128, 192), np.uint8)
    for channel, path in enumerate(record.mask_paths.values()):
        if path is not None:
            expected[channel] = read_mask(path)
    np.testing.assert_array_equal(unpack_masks(np.asarray(bits)), expected)


def test_cache_follows_a_changed_source_file(tmp_path):
    root = write_tree(tmp_path / "data", {"IDRiD_01": (noise_image(0), {"MA": dot(10, 10), "OD": dot(50, 60, 20)})})
    dataset = PatchSegmentationDataset(root, "train", crop_size=(32, 32), cache_dir=tmp_path / "cache")
    _, bits, points = dataset.arrays(0)
    assert points[points[:, 0] == 0, 1:].tolist() == [[10, 10], [10, 11], [11, 10], [11, 11]]
    path = dataset.records[0].mask_paths["MA"]
    Image.fromarray(dot(70, 90) * 255).save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    _, bits, points = dataset.arrays(0)
    assert points[points[:, 0] == 0, 1:].tolist() == [[70, 90], [70, 91], [71, 90], [71, 91]]
    assert unpack_masks(np.asarray(bits))[0, 70, 90] == 1 and unpack_masks(np.asarray(bits))[0, 10, 10] == 0
    names = os.listdir(tmp_path / "cache")
    assert sum(".lesionbits." in name for name in names) == 1  # the stale entries were replaced
    assert sum(".lesionpoints" in name for name in names) == 1


def covering_share(lesion_pixels, crop, size):
    """Share of uniform crop origins whose crop contains every pixel of the lesion (exact count)."""
    (y0, x0), (y1, x1) = lesion_pixels.min(0), lesion_pixels.max(0)
    tops = [t for t in range(size[0] - crop[0] + 1) if t <= y0 and y1 < t + crop[0]]
    lefts = [s for s in range(size[1] - crop[1] + 1) if s <= x0 and x1 < s + crop[1]]
    return len(tops) * len(lefts) / ((size[0] - crop[0] + 1) * (size[1] - crop[1] + 1))


def within_binomial(hits, draws, p, sigmas=4.0):
    return abs(hits / draws - p) <= sigmas * np.sqrt(p * (1 - p) / draws)


def test_lesion_aware_sampling_hits_the_requested_share(tmp_path):
    torch.manual_seed(0)
    tiny = dot(40, 50)  # 2x2 microaneurysm, the only lesion
    root = write_tree(tmp_path / "data", {"IDRiD_01": (noise_image(1), {"MA": tiny})})
    share, draws, crop = 0.3, 400, (24, 32)
    dataset = PatchSegmentationDataset(root, "train", crop_size=crop, lesion_share=share, train=False,
                                       crops_per_image=draws, cache_dir=tmp_path / "cache")
    samples = [dataset[item] for item in range(draws)]
    containing = sum(int(s["masks"][0].sum()) == 4 for s in samples)  # the whole dot is in the crop
    expected = share + (1 - share) * covering_share(np.argwhere(tiny), crop, (HEIGHT, WIDTH))
    assert within_binomial(containing, draws, expected)
    centred = [s for s in samples if s["centred_on"] == 0]
    assert within_binomial(len(centred), draws, share)
    assert all(s["masks"][0, crop[0] // 2, crop[1] // 2] == 1 for s in centred)  # the lesion pixel is the centre

    # Beside a large optic disc, the microaneurysm still gets half of the lesion-centred crops.
    disc = np.zeros((HEIGHT, WIDTH), np.uint8)
    disc[20:80, 70:125] = 1
    root = write_tree(tmp_path / "data2", {"IDRiD_01": (noise_image(2), {"MA": tiny, "OD": disc})})
    dataset = PatchSegmentationDataset(root, "train", crop_size=crop, lesion_share=1.0, train=False,
                                       crops_per_image=draws, cache_dir=tmp_path / "cache2")
    kinds = Counter(int(dataset[item]["centred_on"]) for item in range(draws))
    assert set(kinds) == {0, 4} and within_binomial(kinds[0], draws, 0.5)
    only_ma = PatchSegmentationDataset(root, "train", crop_size=crop, lesion_share=1.0, sample_lesions=("MA",),
                                       train=False, cache_dir=tmp_path / "cache2")
    assert all(int(only_ma[0]["centred_on"]) == 0 for _ in range(20))


def test_centre_weights_set_each_kinds_chance_and_anywhere_moves_the_lesion_in_the_crop(tmp_path):
    torch.manual_seed(3)
    tiny = dot(40, 50)
    disc = np.zeros((HEIGHT, WIDTH), np.uint8)
    disc[20:80, 70:125] = 1
    root = write_tree(tmp_path / "data", {"IDRiD_01": (noise_image(2), {"MA": tiny, "OD": disc})})
    crop, draws = (24, 32), 400
    weighted = PatchSegmentationDataset(root, "train", crop_size=crop, lesion_share=1.0, train=False,
                                        crops_per_image=draws, cache_dir=tmp_path / "cache",
                                        centre_weights={"MA": 3.0, "HE": 50.0})  # HE absent: no effect
    kinds = Counter(int(weighted[item]["centred_on"]) for item in range(draws))
    assert set(kinds) == {0, 4} and within_binomial(kinds[0], draws, 0.75)

    anywhere = PatchSegmentationDataset(root, "train", crop_size=crop, lesion_share=1.0, train=False,
                                        crops_per_image=draws, cache_dir=tmp_path / "cache",
                                        sample_lesions=("MA",), lesion_position="anywhere")
    places = []
    for item in range(draws):
        sample = anywhere[item]
        rows, columns = np.nonzero(sample["masks"][0].numpy())
        assert rows.size > 0  # the drawn pixel is always inside its crop
        top, left = sample["origin"].tolist()
        places.append((40 - top, 50 - left))  # where the dot's first pixel landed in the crop
    rows, columns = np.array(places).T
    assert rows.min() <= 1 and rows.max() >= crop[0] - 2 and columns.min() <= 1 and columns.max() >= crop[1] - 2
    assert abs(rows.mean() - (crop[0] - 1) / 2) < 2 and abs(columns.mean() - (crop[1] - 1) / 2) < 2
    centred = PatchSegmentationDataset(root, "train", crop_size=crop, lesion_share=1.0, train=False,
                                       crops_per_image=20, cache_dir=tmp_path / "cache", sample_lesions=("MA",))
    assert {tuple(centred[item]["origin"].tolist()) for item in range(20)} <= {
        (y - crop[0] // 2, x - crop[1] // 2) for y in (40, 41) for x in (50, 51)}


def test_crops_stay_aligned_with_masks_through_the_augmentations(tmp_path):
    torch.manual_seed(1)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    marker = np.zeros((HEIGHT, WIDTH), np.uint8)
    marker[30:50, 40:46] = 1  # an L: flips and rotations change where its pixels are
    marker[44:50, 46:60] = 1
    image[marker == 1] = 255
    root = write_tree(tmp_path / "data", {"IDRiD_01": (image, {"HE": marker})})
    dataset = PatchSegmentationDataset(root, "train", crop_size=(48, 48), lesion_share=1.0, train=True,
                                       crops_per_image=30, cache_dir=tmp_path / "cache")
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    flipped = 0
    for item in range(len(dataset)):
        sample = dataset[item]
        bright = (sample["image"] * std + mean).mean(0) > 0.5  # [48, 48] the marker as the image shows it
        mask = sample["masks"][1].bool()
        assert mask.sum() > 50
        assert (bright & mask).sum() / (bright | mask).sum() > 0.75, item
        top, left = sample["origin"].tolist()
        flipped += not torch.equal(mask, torch.from_numpy(marker[top:top + 48, left:left + 48]).bool())
    assert flipped > 5  # the augmentations did move the crops


def test_bad_settings_are_named(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="crop_size=.*at most image_size"):
        PatchSegmentationDataset(synthetic_root, "train", crop_size=(80, 80), image_size=(64, 96), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="lesion_share=1.5"):
        PatchSegmentationDataset(synthetic_root, "train", crop_size=(32, 32), lesion_share=1.5, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="sample_lesions=\\('XX',\\)"):
        PatchSegmentationDataset(synthetic_root, "train", crop_size=(32, 32), sample_lesions=("XX",),
                                 cache_dir=tmp_path)
    with pytest.raises(ValueError, match="centre_weights=\\{'MA': 0\\}: expected positive numbers"):
        PatchSegmentationDataset(synthetic_root, "train", crop_size=(32, 32), centre_weights={"MA": 0},
                                 cache_dir=tmp_path)
    with pytest.raises(ValueError, match="centre_weights=\\{'XX': 1\\}"):
        PatchSegmentationDataset(synthetic_root, "train", crop_size=(32, 32), centre_weights={"XX": 1},
                                 cache_dir=tmp_path)
    with pytest.raises(ValueError, match="lesion_position='edge': expected 'centre' or 'anywhere'"):
        PatchSegmentationDataset(synthetic_root, "train", crop_size=(32, 32), lesion_position="edge",
                                 cache_dir=tmp_path)
    with pytest.raises(ValueError, match="records: no segmentation images"):
        PatchSegmentationDataset(synthetic_root, "train", crop_size=(32, 32), records=[], cache_dir=tmp_path)
    too_big = PatchSegmentationDataset(synthetic_root, "train", crop_size=(200, 200), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="larger than .*IDRiD_01.jpg \\(128x192 native\\)"):
        too_big[0]


def test_a_subset_of_records(synthetic_root, tmp_path):
    records = idrid.segmentation_records(synthetic_root, "train")[1:3]
    dataset = PatchSegmentationDataset(synthetic_root, "train", crop_size=(32, 32), records=records,
                                       crops_per_image=2, cache_dir=tmp_path)
    assert len(dataset) == 4
    assert [dataset[item]["name"] for item in range(4)] == [r.name for r in records] * 2


def test_no_cache_mode_keeps_arrays_in_memory(synthetic_root, tmp_path, monkeypatch):
    root = write_tree(tmp_path / "data", {"IDRiD_01": (noise_image(3), {"MA": dot(10, 10)})})
    counts = count_decodes(monkeypatch)
    dataset = PatchSegmentationDataset(root, "train", crop_size=(32, 32), cache_dir=False, crops_per_image=4)
    for item in range(len(dataset)):
        dataset[item]
    assert counts == Counter({"IDRiD_01.jpg": 1, "IDRiD_01_MA.tif": 1}) and not (root / ".cache").exists()


def test_working_resolution_and_the_dataset_a_patches_section_describes(synthetic_root, tmp_path):
    records = idrid.segmentation_records(synthetic_root, "train")
    section = {**PATCH_SETTINGS, "crop_size": [64, 64], "crops_per_image": 3, "lesion_share": 1.0,
               "centre_weights": {**PATCH_SETTINGS["centre_weights"], "MA": 2.5}, "lesion_position": "anywhere"}
    assert working_resolution(section, records) == (128, 192)  # native, from the files
    assert working_resolution({**section, "working_size": [96, 144]}, records) == (96, 144)
    with pytest.raises(ConfigError, match=r"data\.patches\.crop_size=\[256, 64\]: larger than .*128x192 native"):
        working_resolution({**section, "crop_size": [256, 64]}, records)
    dataset = patch_dataset(synthetic_root, section, records[:2], cache_dir=tmp_path, lesions=("OD",))
    assert len(dataset) == 6 and dataset.image_size is None and dataset.crop_size == (64, 64)
    assert dataset.sample_weights.tolist() == [1.0] and dataset.lesion_position == "anywhere"
    assert patch_dataset(synthetic_root, section, records[:2], cache_dir=tmp_path).sample_weights.tolist() == [
        2.5, 1.0, 1.0, 1.0, 1.0]
    sample = dataset[0]
    assert sample["image"].shape == (3, 64, 64) and int(sample["centred_on"]) == idrid.LESIONS.index("OD")
