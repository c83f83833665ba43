"""Data for the DeepLabV3+ baseline: IDRiD's segmentation set, the five lesion masks as one target.

Training images are resized to data.image_size and randomly cropped to data.crop_size (None: no
crop) with the train augmentations; test images are the full resized image, normalised only.
With data.patches.enabled, training samples are lesion-aware crops of images kept at the working
resolution (codebase.data.patches) and evaluation images are whole at that resolution (scored by
sliding windows, segmentation.engine.evaluate).
"""
from codebase.data.idrid import segmentation_records
from codebase.data.image_datasets import SegmentationDataset
from codebase.data.loaders import EpochLoader
from codebase.data.patches import patch_dataset, working_resolution


def patch_settings(data) -> dict | None:
    """The enabled ``data.patches`` section, or None (also for runs saved before it existed)."""
    patches = data.get("patches") or {}
    return patches if patches.get("enabled") else None


def evaluation_size(data, records) -> tuple[int, int]:
    """(H, W) whole evaluation images are read at: data.image_size, or the patches' working resolution."""
    patches = patch_settings(data)
    return working_resolution(patches, records) if patches else tuple(data["image_size"])


def build_datasets(data, splits):
    """{"train", "validation", "test"} datasets from the config's ``data`` section and the images of
    each split (codebase.data.splits); a split without images is left out. Training: resized (and
    cropped) SegmentationDataset, or with data.patches.enabled a PatchSegmentationDataset."""
    patches = patch_settings(data)
    size = evaluation_size(data, [record for records in splits.values() if records for record in records])
    datasets = {}
    for split, records in splits.items():
        if not records:
            continue
        if split == "train" and patches:
            datasets[split] = patch_dataset(data["root"], patches, records, data["cache_dir"])
        elif split == "train":
            datasets[split] = SegmentationDataset(data["root"], split, data["image_size"], train=True,
                                                  crop_size=data["crop_size"], cache_dir=data["cache_dir"],
                                                  records=records)
        else:
            datasets[split] = SegmentationDataset(data["root"], split, size, cache_dir=data["cache_dir"],
                                                  records=records)
    return datasets


def build_loaders(config, splits, device):
    """{"train", "validation", "test"} EpochLoaders: shuffled training batches, the others in order."""
    data, train = config["data"], config["train"]
    options = {"seed": config["seed"], "num_workers": data["num_workers"],
               "pin_memory": data["pin_memory"] and device.type == "cuda"}
    return {split: EpochLoader(dataset, train["batch_size" if split == "train" else "eval_batch_size"],
                               train=split == "train", **options)
            for split, dataset in build_datasets(data, splits).items()}


def split_loader(config, split, device):
    """The EpochLoader of IDRiD's own "train" or "test" split alone, whole (notebooks, comparisons)."""
    records = segmentation_records(config["data"]["root"], split)
    return build_loaders(config, {split: records}, device)[split]
