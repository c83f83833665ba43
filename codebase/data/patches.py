"""Patch training data at a working resolution up to the native one, with lesion-aware crops.

Each image is decoded once into the on-disk cache (`codebase.data.cache`'s entry names, so a changed
source file gets a new entry) and then memory-mapped: a crop reads only its rows of the cached
array, whatever the image size. Per image the cache also holds one uint8 array with the lesion masks
as bits (bit l: lesion l of LESIONS) and, beside it, the coordinates of each lesion's pixels (a
uniform subsample when there are more than `max_points`), so a crop can be centred on a lesion
without scanning the masks. A share of the crops is centred on a random pixel of a lesion kind drawn
among the kinds present in the image (uniformly by default, or by per-kind weights), so a few
microaneurysm pixels are sampled as often as a large optic disc; the other crops are uniform. The
lesion pixel sits at the crop's centre or, optionally, anywhere in it. Crop first, then the joint
augmentations.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from codebase.config import (
    BOOLEAN,
    ConfigError,
    choice,
    get_value,
    integer,
    is_number,
    number,
    optional,
    require,
    size_hw,
)
from codebase.data import idrid
from codebase.data.cache import ResizedCache, load_resized_image, load_resized_mask
from codebase.data.image_datasets import parse_size_hw
from codebase.data.images import read_size
from codebase.data.transforms import eval_transforms, to_tv_tensors, train_transforms

LESION_POSITIONS = ("centre", "anywhere")  # where a lesion crop's drawn pixel lies: its centre, or anywhere in it
_BIT_WEIGHTS = 1 << np.arange(len(idrid.LESIONS), dtype=np.uint8)  # bit of each lesion in LESIONS order


class MappedCache(ResizedCache):
    """ResizedCache whose entries are opened memory-mapped (read-only) instead of read whole.

    Image entries are the very entries ResizedCache.image writes (shared with SegmentationDataset at
    the same size). directory=None keeps the arrays in memory instead (nothing written).
    """

    def __init__(self, directory):
        super().__init__(directory)
        self._in_memory: dict = {}

    def mapped(self, kind: str, path, size_hw, depends_on, build) -> np.ndarray:
        """The entry for (kind, path, size, depends_on), built by ``build()`` on a miss."""
        if self.directory is None:
            key = (kind, str(path), tuple(size_hw), tuple(map(str, depends_on)))
            if key not in self._in_memory:
                self._in_memory[key] = build()
            return self._in_memory[key]
        entry = self.entry_path(kind, path, size_hw, depends_on)
        try:
            return np.load(entry, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):  # missing, or damaged: rebuild
            pass
        self._write(entry, build())
        return np.load(entry, mmap_mode="r", allow_pickle=False)


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """uint8 [L, H, W] of 0/1 (L <= 8) -> uint8 [H, W], bit l set where mask l is."""
    return np.bitwise_or.reduce(masks.astype(np.uint8) * _BIT_WEIGHTS[: len(masks)].reshape(-1, 1, 1), axis=0)


def unpack_masks(bits: np.ndarray, lesions: int = len(idrid.LESIONS)) -> np.ndarray:
    """uint8 [H, W] of bits -> uint8 [L, H, W] of 0/1."""
    return ((bits[None] & _BIT_WEIGHTS[:lesions].reshape(-1, 1, 1)) != 0).astype(np.uint8)


def lesion_points(bits: np.ndarray, max_points: int) -> np.ndarray:
    """int32 [N, 3] rows (lesion index, y, x), grouped by lesion: every pixel of a lesion, or a
    uniform subsample of max_points of them (seeded by lesion, so rebuilding gives the same)."""
    rows = []
    for index in range(len(idrid.LESIONS)):
        ys, xs = np.nonzero(bits & _BIT_WEIGHTS[index])
        if ys.size > max_points:
            keep = np.sort(np.random.default_rng(index).choice(ys.size, max_points, replace=False))
            ys, xs = ys[keep], xs[keep]
        rows.append(np.stack([np.full(ys.size, index), ys, xs], axis=1))
    return np.concatenate(rows).astype(np.int32).reshape(-1, 3)


class PatchSegmentationDataset(Dataset):
    """Random crops of segmentation images: {"image": float32 [3, h, w], "masks": uint8 [5, h, w] of 0/1
    (LESIONS order), "name": str, "origin": int64 [2] (top, left of the crop in the working image),
    "centred_on": int64 [] (index in LESIONS of the lesion the crop is centred on, -1: uniform crop)}.

    image_size=(H, W): working resolution (None: each image's native size). crop_size=(h, w): at most
    the working size. lesion_share: the share of crops centred on a lesion pixel (drawn among
    ``sample_lesions`` present in the image; an image with none gets a uniform crop). centre_weights:
    {lesion: weight}, the relative chance of each present kind to be the one a lesion crop is drawn on
    (absent: 1, so uniform by default). lesion_position: "centre" puts the drawn lesion pixel at the
    crop's centre, "anywhere" at a uniform place in the crop (where the image's border allows), so
    that the crop's centre does not tell the model where lesions are.
    crops_per_image: items per image per epoch (item i crops image i % number of images).
    train=False: no augmentation, only normalisation. cache_dir: None `<root>/.cache`, False none.
    records: a subset of the split's SegmentationRecords (e.g. what is left after carving out validation).
    """

    def __init__(self, root, split: str, crop_size=(512, 512), image_size=None, lesion_share: float = 0.5,
                 sample_lesions=idrid.LESIONS, crops_per_image: int = 1, train: bool = True, cache_dir=None,
                 max_points: int = 100_000, records=None, centre_weights=None, lesion_position: str = "centre"):
        self.root = Path(root)
        self.split = split
        self.crop_size = parse_size_hw(crop_size, "crop_size")
        self.image_size = parse_size_hw(image_size, "image_size") if image_size is not None else None
        if self.image_size and (self.crop_size[0] > self.image_size[0] or self.crop_size[1] > self.image_size[1]):
            raise ValueError(f"crop_size={crop_size!r}: expected at most image_size={tuple(image_size)!r}")
        if not 0.0 <= lesion_share <= 1.0:
            raise ValueError(f"lesion_share={lesion_share!r}: expected a fraction in [0, 1]")
        unknown = [lesion for lesion in sample_lesions if lesion not in idrid.LESIONS]
        if unknown or not sample_lesions:
            raise ValueError(f"sample_lesions={tuple(sample_lesions)!r}: expected some of {idrid.LESIONS}")
        if int(crops_per_image) < 1 or int(max_points) < 1:
            raise ValueError(f"crops_per_image={crops_per_image!r}, max_points={max_points!r}: "
                             "expected positive integers")
        weights = dict(centre_weights or {})
        if any(lesion not in idrid.LESIONS or not (is_number(w) and 0 < w < math.inf) for lesion, w in weights.items()):
            raise ValueError(f"centre_weights={weights!r}: expected positive numbers for some of {idrid.LESIONS}")
        if lesion_position not in LESION_POSITIONS:
            raise ValueError(f"lesion_position={lesion_position!r}: expected {' or '.join(map(repr, LESION_POSITIONS))}")
        self.lesion_share = float(lesion_share)
        self.sample_indices = np.array([idrid.LESIONS.index(lesion) for lesion in sample_lesions])
        self.sample_weights = np.array([float(weights.get(lesion, 1.0)) for lesion in sample_lesions])
        self.lesion_position = lesion_position
        self.crops_per_image = int(crops_per_image)
        self.max_points = int(max_points)
        self.train = train
        self.records = list(records) if records is not None else idrid.segmentation_records(self.root, split)
        if not self.records:
            raise ValueError(f"records: no segmentation images to crop from ({self.root}, split {split!r})")
        directory = None if cache_dir is False else (self.root / ".cache" if cache_dir is None else cache_dir)
        self.cache = MappedCache(directory)
        self.transform = train_transforms() if train else eval_transforms()

    def __len__(self) -> int:
        return len(self.records) * self.crops_per_image

    def working_size(self, index: int) -> tuple[int, int]:
        """(H, W) the image is kept at: image_size, or its native size (read from the file header)."""
        if self.image_size is not None:
            return self.image_size
        width, height = read_size(self.records[index].image_path)
        if self.crop_size[0] > height or self.crop_size[1] > width:
            raise ValueError(f"crop_size={self.crop_size!r}: larger than {self.records[index].image_path} "
                             f"({height}x{width} native)")
        return height, width

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Memory-mapped uint8 image [H, W, 3], uint8 mask bits [H, W], int32 lesion points [N, 3]."""
        record = self.records[index]
        size = self.working_size(index)
        image = self.cache.mapped("image", record.image_path, size, (),
                                  lambda: load_resized_image(record.image_path, size))
        mask_paths = tuple(p for p in record.mask_paths.values() if p is not None)

        def build_bits():
            expected = read_size(record.image_path)
            masks = np.zeros((len(idrid.LESIONS), *size), np.uint8)
            for channel, lesion in enumerate(idrid.LESIONS):
                if record.mask_paths[lesion] is not None:
                    masks[channel] = load_resized_mask(record.mask_paths[lesion], size, expected)
            return pack_masks(masks)

        depends_on = (record.image_path, *mask_paths)  # masks are checked against the image's size
        bits = self.cache.mapped("lesionbits", record.image_path, size, depends_on, build_bits)
        points = self.cache.mapped(f"lesionpoints{self.max_points}", record.image_path, size, depends_on,
                                   lambda: lesion_points(np.asarray(bits), self.max_points))
        return image, bits, points

    def crop_origin(self, points: np.ndarray, size_hw: tuple[int, int]) -> tuple[int, int, int]:
        """(top, left, lesion index or -1) of a crop, drawn with torch's generator (seeded per worker)."""
        height, width = size_hw
        crop_h, crop_w = self.crop_size
        present = np.isin(self.sample_indices, points[:, 0])
        if present.any() and float(torch.rand(())) < self.lesion_share:
            weights = torch.from_numpy(self.sample_weights * present)
            lesion = int(self.sample_indices[int(torch.multinomial(weights, 1))])
            candidates = np.flatnonzero(points[:, 0] == lesion)
            _, y, x = points[candidates[int(torch.randint(candidates.size, ()))]]
            if self.lesion_position == "centre":
                above, before = crop_h // 2, crop_w // 2
            else:  # the lesion pixel at a uniform place in the crop, so position says nothing
                above, before = int(torch.randint(crop_h, ())), int(torch.randint(crop_w, ()))
            top = min(max(int(y) - above, 0), height - crop_h)
            left = min(max(int(x) - before, 0), width - crop_w)
            return top, left, lesion
        top = int(torch.randint(height - crop_h + 1, ()))
        left = int(torch.randint(width - crop_w + 1, ()))
        return top, left, -1

    def __getitem__(self, item: int) -> dict:
        index = item % len(self.records)
        image, bits, points = self.arrays(index)
        top, left, lesion = self.crop_origin(points, image.shape[:2])
        rows, columns = slice(top, top + self.crop_size[0]), slice(left, left + self.crop_size[1])
        image_crop = np.array(image[rows, columns])  # reads only the crop's rows: uint8 [h, w, 3]
        masks_crop = unpack_masks(bits[rows, columns])  # uint8 [5, h, w]
        sample = self.transform(to_tv_tensors(image_crop, masks_crop))
        return {
            "image": sample["image"].as_subclass(torch.Tensor),
            "masks": sample["masks"].as_subclass(torch.Tensor),
            "name": self.records[index].name,
            "origin": torch.tensor([top, left], dtype=torch.int64),
            "centred_on": torch.tensor(lesion, dtype=torch.int64),
        }


# ---------------------------------------------------------------------------------------------
# The ``data.patches`` section of the segmentation and multi-task train scripts

# Sliding windows, wherever an image is predicted window by window (patch evaluation, the full-
# resolution metrics, predict.py): the overlap of neighbouring windows, and windows per forward.
WINDOW_OVERLAP = 0.25
WINDOWS_PER_BATCH = 4

PATCH_SETTINGS = {
    "enabled": False,           # True: train the lesions on crops of images kept at working_size
    "working_size": None,       # [height, width] the images are kept at; None: each image's native size
    "crop_size": [512, 512],    # training crop and sliding-window size at the working resolution
    "lesion_share": 0.5,        # share of crops centred on a lesion pixel (lesion kind drawn among those present)
    "centre_weights": {lesion: 1.0 for lesion in idrid.LESIONS},  # relative chance of each kind to be drawn
    "lesion_position": "centre",  # where the drawn lesion pixel lies in its crop: centre, or anywhere
    "crops_per_image": 8,       # crops of each training image per epoch
    "overlap": WINDOW_OVERLAP,  # overlap of neighbouring sliding windows in evaluation
}


def patch_defaults() -> dict:
    """A fresh copy of PATCH_SETTINGS (nested dicts included) for a train script's CONFIG."""
    return copy.deepcopy(PATCH_SETTINGS)


def patch_setting_rules(prefix: str = "data.patches") -> dict:
    """One rule per setting of PATCH_SETTINGS under ``prefix``."""
    return {
        f"{prefix}.enabled": BOOLEAN,
        f"{prefix}.working_size": optional(size_hw(32)),
        f"{prefix}.crop_size": size_hw(32),
        f"{prefix}.lesion_share": number(0, 1),
        **{f"{prefix}.centre_weights.{lesion}": number(0, low_open=True) for lesion in idrid.LESIONS},
        f"{prefix}.lesion_position": choice(*LESION_POSITIONS),
        f"{prefix}.crops_per_image": integer(1),
        f"{prefix}.overlap": number(0, 1, high_open=True),
    }


def validate_patch_settings(config: dict, prefix: str = "data.patches") -> None:
    """ConfigError when the crop is larger than a given working size (a native working size is
    checked against the images when the data is built: `working_resolution`)."""
    size = get_value(config, f"{prefix}.working_size")
    if size is not None:
        require(config, f"{prefix}.crop_size", lambda crop: crop[0] <= size[0] and crop[1] <= size[1],
                f"[height, width] no larger than {prefix}.working_size={size}")


def working_resolution(patches: dict, records, prefix: str = "data.patches") -> tuple[int, int]:
    """(H, W) of the patch-trained lesion pipeline: the working_size setting, or the native size of
    the first image (IDRiD's are all 4288x2848). ConfigError when the crop does not fit an image."""
    if patches["working_size"] is not None:
        return tuple(patches["working_size"])
    records = list(records)
    if not records:
        raise ConfigError(f"{prefix}.working_size=None: no segmentation images to read the native size from")
    width, height = read_size(records[0].image_path)
    crop = patches["crop_size"]
    for record in records:
        record_width, record_height = read_size(record.image_path)
        if crop[0] > record_height or crop[1] > record_width:
            raise ConfigError(f"{prefix}.crop_size={crop}: larger than {record.image_path} "
                              f"({record_height}x{record_width} native); lower it or set {prefix}.working_size")
    return height, width


def patch_dataset(root, patches: dict, records, cache_dir=None, lesions=idrid.LESIONS) -> PatchSegmentationDataset:
    """The training PatchSegmentationDataset a ``data.patches`` section describes, over ``records``;
    crops are centred on the given ``lesions`` (the run's lesion tasks)."""
    return PatchSegmentationDataset(root, "train", patches["crop_size"], image_size=patches["working_size"],
                                    lesion_share=patches["lesion_share"], sample_lesions=tuple(lesions),
                                    centre_weights=patches.get("centre_weights"),
                                    lesion_position=patches.get("lesion_position", "centre"),
                                    crops_per_image=patches["crops_per_image"], train=True, cache_dir=cache_dir,
                                    records=records)
