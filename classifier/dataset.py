"""Grading data for the baseline classifier: train/test loaders, class weights, majority baseline.

Reads the ``data`` and ``train`` sections of a train_classifier config:
    data.root, data.image_size (height, width), data.cache_dir, data.num_workers, data.pin_memory,
    train.batch_size, train.eval_batch_size, and the run's seed.
"""
import numpy as np

from codebase.config import ConfigError
from codebase.data.idrid import NUM_MER_CLASSES, NUM_RG_CLASSES
from codebase.data.image_datasets import GradingDataset
from codebase.data.loaders import EpochLoader

NUM_CLASSES = {"rg": NUM_RG_CLASSES, "mer": NUM_MER_CLASSES}


def build_dataset(config, split, records=None):
    """The GradingDataset of ``split`` ("train", "validation" or "test"; ``records``: its images,
    see codebase.data.splits), with training augmentation for "train"."""
    data = config["data"]
    return GradingDataset(data["root"], split, data["image_size"], train=split == "train", cache_dir=data["cache_dir"],
                          records=records)


def build_loader(config, dataset, device):
    """An EpochLoader: shuffled full batches for a training dataset, all images in order otherwise."""
    data, train = config["data"], config["train"]
    options = {"num_workers": data["num_workers"], "pin_memory": data["pin_memory"] and device.type == "cuda"}
    if not dataset.train:
        return EpochLoader(dataset, train["eval_batch_size"], train=False, seed=config["seed"], **options)
    loader = EpochLoader(dataset, train["batch_size"], train=True, seed=config["seed"], drop_last=True, **options)
    if len(loader) == 0:
        raise ConfigError(f"train.batch_size={train['batch_size']}: more than the {len(loader.sampler)} training "
                          f"images of {dataset.root} this process sees; lower the batch size")
    return loader


def class_weights(labels, num_classes):
    """Inverse class frequency of ``labels`` [N], scaled to average 1 over the classes present.

    A class absent from ``labels`` gets weight 0 (it never appears as a target anyway).
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)  # [C]
    weights = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    return (weights * (counts > 0).sum() / weights.sum()).tolist()


def grading_class_weights(dataset):
    """{"rg": [5 floats], "mer": [3 floats]} from the dataset's labels (no image is decoded)."""
    labels = dataset.labels  # [N, 2]: (rg, mer)
    return {grade: class_weights(labels[:, column], NUM_CLASSES[grade])
            for column, grade in enumerate(("rg", "mer"))}


def majority_accuracy(dataset):
    """{"rg": accuracy, "mer": accuracy} of always predicting each grade's most frequent class."""
    labels = dataset.labels  # [N, 2]
    return {grade: float(np.bincount(labels[:, column]).max() / len(labels))
            for column, grade in enumerate(("rg", "mer"))}
