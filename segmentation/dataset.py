"""Data for the DeepLabV3+ baseline: IDRiD's segmentation set, the five lesion masks as one target.

Training images are resized to data.image_size and randomly cropped to data.crop_size (None: no
crop) with the train augmentations; test images are the full resized image, normalised only.
"""
from codebase.data.image_datasets import SegmentationDataset
from codebase.data.loaders import EpochLoader


def build_datasets(data):
    """{"train", "test"} SegmentationDatasets from the config's ``data`` section."""
    return {split: SegmentationDataset(data["root"], split, data["image_size"], train=split == "train",
                                       crop_size=data["crop_size"] if split == "train" else None,
                                       cache_dir=data["cache_dir"])
            for split in ("train", "test")}


def build_loaders(config, device):
    """{"train", "test"} EpochLoaders: shuffled training batches, test images in order."""
    data, train = config["data"], config["train"]
    datasets = build_datasets(data)
    options = {"seed": config["seed"], "num_workers": data["num_workers"],
               "pin_memory": data["pin_memory"] and device.type == "cuda"}
    return {"train": EpochLoader(datasets["train"], train["batch_size"], train=True, **options),
            "test": EpochLoader(datasets["test"], train["eval_batch_size"], train=False, **options)}
