"""Per-image test records of a trained run, from which any metric of any resample is recomputed.

Grading: per image and classification task, the true and the predicted class. Segmentation: per
image and lesion, the pixel counts at the threshold (TP, FP, FN) and a histogram of the lesion
probabilities of its negative and its positive pixels (`codebase.evaluation.metrics.SegmentationMeter`'s
2**16 logit-uniform bins, the bins no test image occupies left out), so AUPR follows for any
weighted set of images and equals the meter's on the whole test set.
Records are cached as <records folder>/<configuration>/seed_<S>.npz, keyed by the SHA-256 of
model.pth and the evaluation settings.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from codebase.data.image_datasets import GradingDataset, SegmentationDataset
from codebase.data.loaders import EpochLoader
from codebase.evaluation.metrics import SegmentationMeter
from codebase.runtime.atomic import atomic_write
from codebase.runtime.device import autocast
from codebase.runtime.progress import progress
from inference.runs import load_run

HISTOGRAM_BINS = SegmentationMeter(("MA",)).bins  # the meter's own resolution


def check_same_images(per_run, side, where):
    """ValueError when the runs' `side` records ("grading" or "segmentation") list different images.

    Runs compared image by image (paired intervals, pooled resamples) must have scored one test set;
    `where` names it in the message (the in-domain split or an external dataset).
    """
    names = {tuple(records[side]["names"]) for records in per_run if records.get(side) is not None}
    if len(names) > 1:
        raise ValueError(f"{where}: the runs' {side} records list different images; evaluate them on one data root")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def grading_records(run, root, size, device):
    """{"names": [N], "<task>_true": int64 [N], "<task>_predicted": int64 [N]} for the run's grading tasks."""
    tasks = run.tasks("grading")
    dataset = GradingDataset(root, "test", size)
    loader = EpochLoader(dataset, run.config["train"]["eval_batch_size"], train=False, seed=0)
    true, predicted = {t: [] for t in tasks}, {t: [] for t in tasks}
    for batch in progress(loader, "records grading", total=len(loader)):
        with autocast(device, run.config["train"]["amp"]):
            logits = run.predict(batch["image"].to(device), side="grading")["logits"]
        grades = {key: batch[key] for key in ("rg", "mer")}
        for task in tasks:
            true[task].append(task.target_of(grades).numpy())
            predicted[task].append(logits[task.name].float().argmax(dim=1).cpu().numpy())
    records = {"names": np.array([r.name for r in dataset.records])}
    for task in tasks:
        records[f"{task.key}_true"] = np.concatenate(true[task]).astype(np.int64)
        records[f"{task.key}_predicted"] = np.concatenate(predicted[task]).astype(np.int64)
    return records


@torch.no_grad()
def segmentation_records(run, root, size, device, threshold=0.5, bins=HISTOGRAM_BINS):
    """{"names": [N], "lesions": [L], "counts": int64 [N, L, 3] (TP, FP, FN at threshold), and per
    lesion "bins_<L>": int64 [K] (the histogram bins some image occupies, ascending) and
    "histogram_<L>": int64 [N, 2, K] (negative, positive pixels per bin)} for the run's lesions."""
    tasks = run.tasks("segmentation")
    lesions = [task.key for task in tasks]
    dataset = SegmentationDataset(root, "test", size)
    loader = EpochLoader(dataset, run.config["train"]["eval_batch_size"], train=False, seed=0)
    meter = SegmentationMeter(lesions, threshold=threshold, bins=bins)
    counts, sparse = [], []  # sparse: per image, per lesion (occupied bins [k], counts [2, k])
    for batch in progress(loader, "records segmentation", total=len(loader)):
        with autocast(device, run.config["train"]["amp"]):
            logits = run.predict(batch["image"].to(device), side="segmentation")["logits"]
        probs = torch.cat([torch.sigmoid(logits[task.name].float()) for task in tasks], dim=1)  # [B, L, H, W]
        masks = {"masks": batch["masks"].to(device)}
        masks = torch.cat([task.target_of(masks) for task in tasks], dim=1)  # [B, L, H, W]
        for image in range(probs.shape[0]):  # one image at a time: its own counts and histogram
            record = image_record(meter, probs[image:image + 1], masks[image:image + 1])
            counts.append(record[0])
            sparse.append(record[1])
    return pack_segmentation_records([r.name for r in dataset.records], lesions, counts, sparse)


def image_record(meter, probs, masks):
    """One image's (counts int64 [L, 3], [(occupied bins [k], counts [2, k]) per lesion]) from
    probabilities and masks [1, L, H, W], through ``meter`` (a SegmentationMeter over the L lesions)."""
    meter.reset()
    meter.update(probs, masks)
    histogram = meter.histogram.cpu().numpy()  # [L, 2, bins]
    occupied = [np.flatnonzero(h.sum(axis=0)) for h in histogram]
    return meter.counts.cpu().numpy().copy(), [(bins_, h[:, bins_]) for bins_, h in zip(occupied, histogram)]


def pack_segmentation_records(names, lesions, counts, sparse):
    """The segmentation records (see `segmentation_records`) of images given by `image_record`."""
    records = {"names": np.array(names), "lesions": np.array(lesions), "counts": np.stack(counts)}
    for index, lesion in enumerate(lesions):
        union = np.unique(np.concatenate([image[index][0] for image in sparse]))  # [K]
        histogram = np.zeros((len(sparse), 2, union.size), np.int64)
        for row, image in enumerate(sparse):
            occupied, values = image[index]
            histogram[row][:, np.searchsorted(union, occupied)] = values
        records[f"bins_{lesion}"], records[f"histogram_{lesion}"] = union, histogram
    return records


def run_records(folder, root, size, device, cache_file, threshold=0.5):
    """{"grading": records or None, "segmentation": records or None} of the finished run in `folder`,
    read from `cache_file` when it was written for the same model.pth and settings."""
    folder, cache_file = Path(folder), Path(cache_file)
    key = {"model_sha256": file_sha256(folder / "model.pth"), "data_root": str(Path(root).resolve()),
           "size": list(size), "threshold": threshold, "bins": HISTOGRAM_BINS}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as cached:
            if json.loads(str(cached["key"])) == key:
                return _unpack(cached)
    run = load_run(folder, device)
    records = {"grading": grading_records(run, root, size, device) if run.tasks("grading") else None,
               "segmentation": segmentation_records(run, root, size, device, threshold)
               if run.tasks("segmentation") else None}
    arrays = {"key": np.array(json.dumps(key))}
    for side, values in records.items():
        for name, array in (values or {}).items():
            arrays[f"{side}/{name}"] = array
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache_file, lambda file: np.savez_compressed(file, **arrays))
    return records


def _unpack(cached):
    records = {"grading": None, "segmentation": None}
    for name in cached.files:
        if "/" in name:
            side, field = name.split("/", 1)
            records[side] = records[side] or {}
            records[side][field] = cached[name]
    return records
