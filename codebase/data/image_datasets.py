"""PyTorch datasets over IDRiD (or its synthetic stand-in): disease grading and lesion segmentation.

Images and masks come resized from the on-disk cache (`codebase.data.cache`, default `<root>/.cache`),
then go through the train or eval preset of `codebase.data.transforms`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from codebase.data import idrid
from codebase.data.cache import ResizedCache
from codebase.data.provenance import camera_lookup
from codebase.data.transforms import eval_transforms, to_tv_tensors, train_transforms


def _cache(root: Path, cache_dir) -> ResizedCache:
    """cache_dir None: `<root>/.cache`; False: no cache (decode on every access)."""
    if cache_dir is False:
        return ResizedCache(None)
    return ResizedCache(root / ".cache" if cache_dir is None else cache_dir)


UNKNOWN_CAMERA = ""  # an item's "camera" where the data root records none (codebase.data.provenance)


def image_cameras(root: Path, records) -> list[str]:
    """Per record, the camera profile that took its image, or UNKNOWN_CAMERA."""
    camera_of = camera_lookup(root)
    return [camera_of(record.image_path) or UNKNOWN_CAMERA for record in records]


def parse_size_hw(value, what: str) -> tuple[int, int]:
    """(height, width) from any pair of positive whole numbers; ValueError naming ``what`` otherwise."""
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}={value!r}: expected (height, width)") from None
    if height < 1 or width < 1:
        raise ValueError(f"{what}={value!r}: expected positive (height, width)")
    return height, width


class GradingDataset(Dataset):
    """Item: {"image": float32 [3,H,W] normalised, "rg": int64 [], "mer": int64 [], "name": str,
    "camera": str (UNKNOWN_CAMERA where the root records none)}."""

    def __init__(self, root, split: str, image_size=(712, 1072), train: bool = False, cache_dir=None, records=None):
        """``split`` names the images: "train", "validation" or "test" (codebase.data.splits), with
        their ``records``; records None reads IDRiD's own "train" or "test" split whole."""
        self.root = Path(root)
        self.split = split
        self.image_size = parse_size_hw(image_size, "image_size")
        self.train = train
        self.records = list(records) if records is not None else idrid.grading_records(self.root, split)
        self.cameras = image_cameras(self.root, self.records)
        self.cache = _cache(self.root, cache_dir)
        self.transform = train_transforms() if train else eval_transforms()

    @property
    def labels(self) -> np.ndarray:
        """int64 [N, 2]: (retinopathy grade, macular edema risk) per image, no decoding."""
        return np.array([(r.retinopathy_grade, r.macular_edema_risk) for r in self.records], np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = self.cache.image(record.image_path, self.image_size)  # uint8 [H,W,3]
        sample = self.transform(to_tv_tensors(image))
        return {
            "image": sample["image"].as_subclass(torch.Tensor),
            "rg": torch.tensor(record.retinopathy_grade, dtype=torch.int64),
            "mer": torch.tensor(record.macular_edema_risk, dtype=torch.int64),
            "name": record.name,
            "camera": self.cameras[index],
        }


class SegmentationDataset(Dataset):
    """Item: {"image": float32 [3,h,w], "masks": uint8 [5,h,w] of 0/1 in LESIONS order, "name": str,
    "camera": str (as for GradingDataset)}.

    (h, w) is crop_size when training with a crop, else image_size; eval never crops.
    """

    def __init__(self, root, split: str, image_size=(712, 1072), train: bool = False, crop_size=None, cache_dir=None,
                 records=None):
        """``records`` as for GradingDataset."""
        self.root = Path(root)
        self.split = split
        self.image_size = parse_size_hw(image_size, "image_size")
        self.crop_size = parse_size_hw(crop_size, "crop_size") if crop_size is not None else None
        if self.crop_size and (self.crop_size[0] > self.image_size[0] or self.crop_size[1] > self.image_size[1]):
            raise ValueError(f"crop_size={crop_size!r}: expected at most image_size={tuple(image_size)!r}")
        self.train = train
        self.records = list(records) if records is not None else idrid.segmentation_records(self.root, split)
        self.cameras = image_cameras(self.root, self.records)
        self.cache = _cache(self.root, cache_dir)
        self.transform = train_transforms(self.crop_size) if train else eval_transforms()

    def __len__(self) -> int:
        return len(self.records)

    def load_masks(self, index: int) -> np.ndarray:
        """uint8 [5,H,W] of 0/1 at image_size, untransformed; an absent mask is all zeros."""
        record = self.records[index]
        masks = np.zeros((len(idrid.LESIONS), *self.image_size), np.uint8)
        for channel, lesion in enumerate(idrid.LESIONS):
            path = record.mask_paths[lesion]
            if path is not None:
                masks[channel] = self.cache.mask(path, self.image_size, image_path=record.image_path)
        return masks

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = self.cache.image(record.image_path, self.image_size)  # uint8 [H,W,3]
        sample = self.transform(to_tv_tensors(image, self.load_masks(index)))
        return {
            "image": sample["image"].as_subclass(torch.Tensor),
            "masks": sample["masks"].as_subclass(torch.Tensor),
            "name": record.name,
            "camera": self.cameras[index],
        }
