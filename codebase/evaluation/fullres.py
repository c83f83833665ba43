"""Lesion metrics at the original resolution of the masks (the IDRiD challenge's setting).

A model may see an image at any working size (whole and resized, or by sliding windows over a
larger working image); its per-lesion probabilities are upsampled bilinearly to the size of the
original mask files and streamed into `codebase.evaluation.metrics.SegmentationMeter` histograms one image
and one lesion at a time, so memory depends on one full-size map, never on the number of images.
Results carry a `_fullres` suffix so they sit beside the working-resolution metrics in a history.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codebase.data import idrid
from codebase.data.cache import ResizedCache
from codebase.data.images import read_mask, read_size
from codebase.data.patches import WINDOW_OVERLAP, WINDOWS_PER_BATCH
from codebase.data.transforms import eval_transforms, to_tv_tensors
from codebase.evaluation.metrics import SegmentationMeter
from codebase.evaluation.sliding_window import flip_averaged, predict_sliding_window
from codebase.runtime.device import autocast
from codebase.runtime.progress import progress

SUFFIX = "_fullres"


def upsample_probabilities(probs: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """[B, L, h, w] probabilities -> float32 [B, L, H, W], bilinear (align_corners=False), in [0, 1]."""
    probs = probs.float()
    if tuple(probs.shape[-2:]) == tuple(size_hw):
        return probs
    return F.interpolate(probs, size=tuple(size_hw), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


class FullResolutionMeter:
    """Per-lesion SegmentationMeters fed with probabilities upsampled to the size of the masks."""

    def __init__(self, lesions=idrid.LESIONS, threshold: float = 0.5, bins: int = 2**16):
        self.lesions = tuple(lesions)
        self.meters = {lesion: SegmentationMeter((lesion,), threshold=threshold, bins=bins) for lesion in self.lesions}

    def update(self, probs: torch.Tensor, masks) -> None:
        """probs [B, L, h, w] at any working size; masks [B, L, H, W] (0/1, numpy or torch) at full size."""
        masks = torch.as_tensor(masks)
        if probs.ndim != 4 or masks.ndim != 4 or probs.shape[:2] != masks.shape[:2] \
                or probs.shape[1] != len(self.lesions):
            raise ValueError(f"probabilities {tuple(probs.shape)} and masks {tuple(masks.shape)} must be "
                             f"[B, {len(self.lesions)}, h, w] and [B, {len(self.lesions)}, H, W] for {self.lesions}")
        for index, lesion in enumerate(self.lesions):  # one full-size lesion map at a time
            full = upsample_probabilities(probs[:, index:index + 1], masks.shape[-2:])  # [B, 1, H, W]
            self.meters[lesion].update(full, masks[:, index:index + 1])

    def state_tensors(self) -> list[torch.Tensor]:
        return [tensor for lesion in self.lesions for tensor in self.meters[lesion].state_tensors()]

    def reset(self) -> None:
        for meter in self.meters.values():
            meter.reset()

    def pr_curve(self, lesion):
        if lesion not in self.meters:
            raise ValueError(f"lesion {lesion!r} is not one of {', '.join(self.lesions)}")
        return self.meters[lesion].pr_curve(lesion)

    def compute(self) -> dict:
        """{lesion: {"iou_fullres", "dice_fullres", "sensitivity_fullres", "precision_fullres",
        "aupr_fullres"}, "mean_iou_fullres", "mean_dice_fullres", "mean_aupr_fullres"} (NaN as in
        SegmentationMeter; means skip NaN)."""
        results = {}
        for lesion in self.lesions:
            values = self.meters[lesion].compute()[lesion]
            results[lesion] = {f"{name}{SUFFIX}": value for name, value in values.items()}
        for name in ("iou", "dice", "aupr"):
            values = [results[lesion][f"{name}{SUFFIX}"] for lesion in self.lesions]
            values = [value for value in values if not math.isnan(value)]
            results[f"mean_{name}{SUFFIX}"] = sum(values) / len(values) if values else math.nan
        return results


def full_size_masks(record: idrid.SegmentationRecord, lesions=idrid.LESIONS, cache: ResizedCache | None = None):
    """uint8 [L, H, W] of 0/1 at the image's own size; an absent mask file is all zeros.
    cache: read through this ResizedCache (decoded once, then read from disk; one byte per pixel)."""
    width, height = read_size(record.image_path)
    masks = np.zeros((len(lesions), height, width), np.uint8)
    for channel, lesion in enumerate(lesions):
        path = record.mask_paths.get(lesion)
        if path is not None and cache is not None:
            masks[channel] = cache.mask(path, (height, width), image_path=record.image_path)
        elif path is not None:
            masks[channel] = read_mask(path, expected_size=(width, height))
    return masks


def _records_and_cache(data, split: str, cache_dir):
    """(records, cache, working size or None) from a SegmentationDataset, a data root, or records."""
    if hasattr(data, "records"):
        return list(data.records), getattr(data, "cache", ResizedCache(cache_dir)), getattr(data, "image_size", None)
    if isinstance(data, (str, Path)):
        return idrid.segmentation_records(data, split), ResizedCache(cache_dir), None
    records = list(data)
    if not all(isinstance(record, idrid.SegmentationRecord) for record in records):
        raise ValueError("data: expected a SegmentationDataset, a data root, or SegmentationRecords")
    return records, ResizedCache(cache_dir), None


@torch.no_grad()
def evaluate_full_resolution(predict_fn: Callable, data, split: str = "test", image_size=None, window=None,
                             overlap: float = WINDOW_OVERLAP, windows_per_batch: int = WINDOWS_PER_BATCH, blend: str = "gaussian",
                             flip_tta: bool = False, lesions: Sequence[str] = idrid.LESIONS, threshold: float = 0.5,
                             device="cpu", amp: str = "off", cache_dir=None, cache_masks: bool = False,
                             keep_meter: bool = False,
                             desc: str = "eval full resolution"):
    """Per-lesion AUPR, Dice, IoU, sensitivity and precision against the original-size masks.

    predict_fn: normalised images float [N, 3, h, w] -> lesion logits [N, len(lesions), h', w'].
    data: a SegmentationDataset (its records, cache and image_size), a data root (with ``split``),
    or a list of SegmentationRecords. image_size=(h, w): the working size the image is read at
    (default: the dataset's, else the original size). window=None: one forward of the whole working
    image; window=(h, w): sliding windows over it (overlap, windows_per_batch, blend as
    `predict_sliding_window`). flip_tta: average with the horizontally flipped prediction.
    cache_dir: where resized images are cached when data is not a dataset (None: no cache).
    cache_masks: keep the full-size masks in that cache too (about 12 MB per IDRiD mask file on disk),
    so repeated evaluations (e.g. every epoch) decode no TIFF again.
    Returns FullResolutionMeter.compute() (and the meter, with ``keep_meter``).
    """
    records, cache, default_size = _records_and_cache(data, split, cache_dir)
    device = torch.device(device)
    meter = FullResolutionMeter(lesions, threshold=threshold)
    transform = eval_transforms()

    def probabilities(images):  # [N, 3, h, w] -> [N, L, h', w']
        with autocast(device, amp):
            logits = predict_fn(images)
        return torch.sigmoid(logits.float())

    whole_image = flip_averaged(probabilities) if flip_tta else probabilities
    for record in progress(records, desc, total=len(records)):
        width, height = read_size(record.image_path)
        size = tuple(image_size or default_size or (height, width))
        array = cache.image(record.image_path, size)  # uint8 [h, w, 3]; decoded anew without a cache folder
        image = transform(to_tv_tensors(array))["image"].as_subclass(torch.Tensor).unsqueeze(0).to(device)
        if window is None:
            probs = whole_image(image)  # [1, L, h', w']
        else:
            probs = predict_sliding_window(probabilities, image, window, overlap=overlap,
                                           windows_per_batch=windows_per_batch, blend=blend, flip_tta=flip_tta,
                                           activation=None)  # [1, L, h, w]
        if probs.shape[1] != len(meter.lesions):
            raise ValueError(f"predict_fn returned {probs.shape[1]} channels for {record.image_path}, "
                             f"expected {len(meter.lesions)} (lesions {meter.lesions})")
        masks = full_size_masks(record, meter.lesions, cache if cache_masks and cache.directory else None)
        masks = torch.from_numpy(masks).unsqueeze(0).to(device)  # [1, L, H, W]
        meter.update(probs, masks)
    results = meter.compute()
    return (results, meter) if keep_meter else results


# ---------------------------------------------------------------------------------------------
# Wiring: training-time evaluation and comparisons

FULLRES_EVAL = ("off", "final", "every")  # train.fullres_eval: never, the final test evaluation, every evaluation


def sliding_window_logits(predict_fn: Callable, window, overlap: float = WINDOW_OVERLAP, windows_per_batch: int = WINDOWS_PER_BATCH,
                          eps: float = 1e-6) -> Callable:
    """images [N, 3, H, W] -> logits [N, L, H, W] of the probabilities blended over sliding ``window``s
    of the images (predict_fn: windows -> logits), so routines that take logits (evaluate_segmentation)
    score a patch-trained model on whole working-size images."""
    def predict(images):
        probs = predict_sliding_window(predict_fn, images, window, overlap=overlap,
                                       windows_per_batch=windows_per_batch)  # [N, L, H, W] in [0, 1]
        return torch.logit(probs.float(), eps=eps)

    return predict


def fullres_metrics(predict_fn: Callable, data, split: str = "test", image_size=None, window=None,
                    overlap: float = WINDOW_OVERLAP, lesions: Sequence[str] = idrid.LESIONS, threshold: float = 0.5,
                    device="cpu", amp: str = "off", cache_dir=None, cache_masks: bool = False,
                    windows_per_batch: int = WINDOWS_PER_BATCH, desc: str = "eval full resolution") -> dict:
    """`evaluate_full_resolution` sharded over the processes of a distributed run (each scores every
    world_size-th image, the histograms are summed), so every rank returns the single-process result.

    predict_fn: normalised images [N, 3, h, w] -> lesion logits [N, len(lesions), h, w].
    data: a data root (with ``split``), a list of SegmentationRecords, or a SegmentationDataset.
    image_size: the working size the model sees (None: the dataset's, else the original size);
    window: None for one forward of the whole image, (h, w) for sliding windows over it.
    Returns {lesion: {"aupr_fullres", "dice_fullres", "iou_fullres", "sensitivity_fullres",
    "precision_fullres"}, "mean_aupr_fullres", "mean_dice_fullres", "mean_iou_fullres"}.
    """
    from codebase.runtime import distributed
    records, cache, default_size = _records_and_cache(data, split, cache_dir)
    shard = records[distributed.rank()::distributed.world_size()]
    _, meter = evaluate_full_resolution(predict_fn, shard, split, image_size or default_size, window, overlap,
                                        windows_per_batch, lesions=lesions, threshold=threshold, device=device,
                                        amp=amp, cache_dir=cache.directory, cache_masks=cache_masks,
                                        keep_meter=True, desc=desc)
    if distributed.is_distributed():
        distributed.all_reduce_sum(meter.state_tensors())
    return meter.compute()


def with_fullres(segmentation: dict, fullres: dict) -> dict:
    """The working-resolution lesion metrics with the full-resolution ones beside them: each lesion's
    dict gains its "*_fullres" entries, the top level the "mean_*_fullres" means."""
    merged = dict(segmentation)
    for key, value in fullres.items():
        if isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    merged["resolution_fullres"] = "original (the mask files' size)"
    return merged


def run_window(config: dict) -> tuple[tuple[int, int] | None, tuple[int, int] | None, float]:
    """(working size or None for the original size, sliding window or None, overlap) a saved run's
    lesions are predicted at: its data.patches when enabled, else one forward of the image resized to
    data.image_size (DeepLabV3+) or data.segmentation_size (multi-task)."""
    data = config["data"]
    patches = data.get("patches") or {}
    if patches.get("enabled"):
        working = patches.get("working_size")
        return (tuple(working) if working else None), tuple(patches["crop_size"]), patches.get("overlap", WINDOW_OVERLAP)
    size = data.get("segmentation_size", data.get("image_size"))
    return tuple(size), None, WINDOW_OVERLAP


def run_fullres_metrics(run, root, split: str = "test", device="cpu", threshold: float | None = None,
                        cache_dir=None) -> dict:
    """`fullres_metrics` of a loaded run (inference.runs.TrainedRun: .config, .tasks(side), .predict) on
    ``root``'s ``split``, at the size and window the run was trained for (`run_window`). Only the
    run's segmentation tasks that are IDRiD lesions (with mask files) are scored; {} when it has none.
    threshold: default the run's train.threshold (0.5 when it has none)."""
    tasks = [task for task in run.tasks("segmentation") if task.key in idrid.LESIONS]
    if not tasks:
        return {}
    size, window, overlap = run_window(run.config)
    train = run.config["train"]

    def lesion_logits(images):  # [N, 3, h, w] -> [N, len(tasks), h, w]
        logits = run.predict(images, side="segmentation")["logits"]
        return torch.cat([logits[task.name] for task in tasks], dim=1)

    return fullres_metrics(lesion_logits, root, split, image_size=size, window=window, overlap=overlap,
                           lesions=[task.key for task in tasks],
                           threshold=train.get("threshold", 0.5) if threshold is None else threshold,
                           device=device, amp=train.get("amp", "off"), cache_dir=cache_dir)
