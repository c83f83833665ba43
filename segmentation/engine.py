"""Training and evaluation of the DeepLabV3+ baseline.

The model's five output channels are the five lesion tasks of the multi-task model
(``segmentation_ma`` ... ``segmentation_od``, LESIONS order), so evaluation runs through the same
routine (codebase.evaluation.evaluate) and reports the same numbers under the same names.
"""
import torch

from codebase.data.patches import WINDOW_OVERLAP
from codebase.evaluation.lesions import lesion_metrics
from codebase.runtime import distributed
from codebase.training.loop import train_steps
from segmentation.model import TASKS


def train_one_epoch(model, criterion, optimizer, loader, epoch, device, amp="off", scaler=None, channels_last=False):
    """One pass over ``loader``; returns batch means {"loss", "components": {...}}, the components
    named as in the multi-task model (`loss_components`).

    criterion: a SegmentationLoss over LESIONS; scaler: make_grad_scaler's (disabled: plain steps).
    """
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def loss_of(batch):
        images = batch["image"].to(device, non_blocking=True, memory_format=memory_format)  # [B, 3, h, w]
        masks = batch["masks"].to(device, non_blocking=True)  # uint8 [B, 5, h, w]
        loss, parts = criterion(model(images), masks)
        return loss, loss_components(parts)

    means = train_steps(loader, loss_of, optimizer, device, amp, scaler, epoch, total=len(loader))
    return {"loss": means.pop("loss"), "components": means}


def loss_components(parts):
    """A SegmentationLoss's parts under the names every model logs: "loss_segmentation_focal" and
    "loss_segmentation_dice" (summed over the lesions with their weights, before focal_weight and
    dice_weight), and per lesion task "loss_segmentation_ma_focal", "loss_segmentation_ma_dice", ..."""
    named = {f"loss_segmentation_{part}": parts[part] for part in ("focal", "dice")}
    for task in TASKS:
        named.update({f"loss_{task.name}_{part}": parts[f"{part}_{task.key}"] for part in ("focal", "dice")})
    return named


def evaluate(model, loader, device, amp="off", threshold=0.5, keep_meter=False, window=None, overlap=WINDOW_OVERLAP,
             split="test", full_resolution=False, cache_masks=False):
    """Per-lesion IoU, Dice, sensitivity, precision (at ``threshold``) and AUPR over ``loader``, their
    means and the resolution (codebase.evaluation.lesions.lesion_metrics, as for the multi-task
    model); with ``keep_meter`` also the SegmentationMeter (for precision-recall curves).
    window=(h, w): each image is predicted by sliding windows of that size (a patch-trained model);
    full_resolution: also against the original-size masks of ``split``."""
    model = distributed.unwrap(model)
    model.eval()

    def segment(images):  # [B, 3, h, w] -> {"logits": {task: [B, 1, h, w]}}
        return {"logits": dict(zip((task.name for task in TASKS), model(images).split(1, dim=1)))}

    return lesion_metrics(segment, loader, TASKS, split, window, overlap, threshold, device, amp, full_resolution,
                          cache_masks, keep_meter)
