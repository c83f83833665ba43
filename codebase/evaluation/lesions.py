"""The lesion metrics of a split: one routine for every model that segments lesions (the DeepLabV3+
baseline and the multi-task model's segmentation side), so both report the same numbers under the
same names, at the working resolution (whole resized images, or sliding windows over a larger
working image) and, optionally, against the mask files at their original size (``*_fullres``).
"""
from collections.abc import Callable, Sequence

import torch

from codebase.data import idrid
from codebase.data.patches import WINDOW_OVERLAP
from codebase.evaluation.evaluate import evaluate_segmentation
from codebase.evaluation.fullres import (
    fullres_metrics,
    sliding_window_logits,
    with_fullres,
)


def lesion_metrics(segment: Callable, loader, tasks: Sequence, split: str, window=None,
                   overlap: float = WINDOW_OVERLAP, threshold: float = 0.5, device="cpu", amp: str = "off",
                   full_resolution: bool = False, cache_masks: bool = False, keep_meter: bool = False):
    """Per task IoU, Dice, sensitivity, precision (at ``threshold``) and AUPR over ``loader``
    (`evaluate_segmentation`), their means and "resolution", the size they were measured at.

    segment: images [N, 3, h, w] -> {"logits": {task: [N, 1, h, w]}} (and "routing" when the
    model routes; kept in the result); tasks: segmentation Tasks. window=(h, w): each image is
    predicted by sliding windows of that size (no routing statistics then). full_resolution: the
    tasks that are IDRiD lesions also against their original-size masks (`fullres_metrics` on
    ``split`` of the loader's dataset; cache_masks keeps those masks in the decoded-image cache).
    With ``keep_meter`` the SegmentationMeter comes back as well (precision-recall curves).
    """
    names, device = [task.name for task in tasks], torch.device(device)

    def logits_of(images, subset=names):  # [N, 3, h, w] -> [N, len(subset), h, w]
        logits = segment(images)["logits"]
        return torch.cat([logits[name] for name in subset], dim=1)

    predict = segment
    if window is not None:
        windows = sliding_window_logits(logits_of, window, overlap)

        def predict(images):
            return {"logits": dict(zip(names, windows(images).split(1, dim=1)))}

    results = evaluate_segmentation(predict, loader, tasks, device, amp, threshold, keep_meter=keep_meter)
    metrics, meter = results if keep_meter else (results, None)
    height, width = loader.dataset.image_size
    metrics["resolution"] = (f"sliding window {window[0]}x{window[1]} over {height}x{width}" if window is not None
                             else f"resized {height}x{width}")
    lesions = [task for task in tasks if task.key in idrid.LESIONS]  # a derived target has no mask file
    if full_resolution and lesions:
        fullres = fullres_metrics(lambda images: logits_of(images, [task.name for task in lesions]), loader.dataset,
                                  split, window=window, overlap=overlap, lesions=[task.key for task in lesions],
                                  threshold=threshold, device=device, amp=amp, cache_masks=cache_masks)
        metrics = with_fullres(metrics, fullres)
    return (metrics, meter) if keep_meter else metrics
