"""Data for the DeepLabV3+ baseline: IDRiD's segmentation set, the five lesion masks as one target.

Training images are resized to data.image_size and randomly cropped to data.crop_size (None: no
crop) with the train augmentations; test images are the full resized image, normalised only.
"""
from codebase.data.idrid import segmentation_records
from codebase.data.image_datasets import SegmentationDataset
from codebase.data.loaders import EpochLoader


def build_datasets(data, splits):
    """{"train", "validation", "test"} SegmentationDatasets from the config's ``data`` section and the
    images of each split (codebase.data.splits); a split without images is left out."""
    return {split: SegmentationDataset(data["root"], split, data["image_size"],
                                       train=split == "train", crop_size=data["crop_size"] if split == "train" else None,
                                       cache_dir=data["cache_dir"], records=records)
            for split, records in splits.items() if records}


def build_loaders(config, splits, device):
    """{"train", "validation", "test"} EpochLoaders: shuffled training batches, the others in order."""
    data, train = config["data"], config["train"]
    options = {"seed": config["seed"], "num_workers": data["num_workers"],
               "pin_memory": data["pin_memory"] and device.type == "cuda"}
    return {split: EpochLoader(dataset, train["batch_size" if split == "train" else "eval_batch_size"],
                               train=split == "train", **options)
            for split, dataset in build_datasets(data, splits).items()}


def test_loader(config, device):
    """The test split's EpochLoader alone (notebooks, comparisons): no split is carved."""
    records = segmentation_records(config["data"]["root"], "test")
    return build_loaders(config, {"test": records}, device)["test"]
