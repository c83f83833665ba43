"""Evaluation over a whole split, shared by the three models, the notebooks and compare_models.py.

A model is seen through a ``predict(images) -> {"logits": {task: tensor}, "routing": {...}}``
function ("routing" only for the multi-task model). Grading images go through the
classification tasks only, segmentation images through the segmentation tasks only. Under
several processes each rank evaluates its shard and the meters' counts are summed, so the
result equals a single-process evaluation of the same model on the same data.
"""
import math

import torch

from codebase.evaluation.metrics import JointAccuracyMeter, SegmentationMeter
from codebase.evaluation.routing_information import (
    GRADE_CLASSES,
    NO_CAMERA,
    NO_GRADE,
    RoutingInformationMeter,
)
from codebase.runtime import distributed
from codebase.runtime.device import autocast
from codebase.runtime.progress import progress


class RoutingMeter:
    """Per task: how many experts each image ran, and the share of images that ran each expert.

    compute() -> {task: {"experts_per_image": mean experts an image ran, "usage": [share of images
    that ran expert e], "busiest_share": the largest usage, "usage_entropy": entropy of the
    dispatches' distribution over experts divided by log E (1 = balanced, 0 = one expert takes
    every image; 1 for a single expert)}}.
    """

    def __init__(self):
        self.sums = {}  # task -> int64 [E + 2]: per-expert selections, experts run, images (exact counts)

    def update(self, routings):
        for task, routing in routings.items():
            mask = routing.mask.detach()
            images = mask.new_full((1,), mask.shape[0], dtype=torch.int64)  # a fill: no host-to-device copy
            row = torch.cat([mask.sum(dim=0), mask.sum().view(1), images])
            total = self.sums.get(task)
            self.sums[task] = row if total is None else total + row

    def state_tensors(self):
        return [self.sums[task] for task in sorted(self.sums)]

    def compute(self):
        result = {}
        for task in sorted(self.sums):
            *selections, experts_run, images = self.sums[task].tolist()
            usage = [s / images for s in selections]
            shares = [s / experts_run for s in selections if s]  # distribution of the dispatches
            entropy = sum(share * math.log(1 / share) for share in shares)
            result[task] = {"experts_per_image": experts_run / images, "usage": usage, "busiest_share": max(usage),
                            "usage_entropy": entropy / math.log(len(usage)) if len(usage) > 1 else 1.0}
        return result


def _information_meter(loader, graded):
    """The meter of the mutual information between routing and the images' camera (as far as the
    loader's dataset records one: its ``cameras``) and, for graded images, their retinopathy grade;
    with a function from a batch to the meter's label codes."""
    dataset = getattr(loader, "dataset", None)  # a plain list of batches has none
    cameras = sorted({camera for camera in getattr(dataset, "cameras", ()) if camera})
    index = {camera: code for code, camera in enumerate(cameras)}
    labels = {"camera": len(cameras), **({"grade": GRADE_CLASSES} if graded else {})}
    meter = RoutingInformationMeter(labels, {"camera": NO_CAMERA, "grade": NO_GRADE})

    def codes(batch):
        size = batch["image"].shape[0]
        camera = torch.tensor([index.get(name, -1) for name in batch.get("camera", [""] * size)], dtype=torch.int64)
        return {"camera": camera, **({"grade": batch["rg"]} if graded else {})}
    return meter, codes


def _with_information(routing, information):
    """The RoutingMeter's statistics with each task's mutual information beside them."""
    for task, values in information.compute().items():
        routing.setdefault(task, {}).update(values)
    return routing


def _reduce(meters):
    if distributed.is_distributed():
        distributed.all_reduce_sum([t for meter in meters for t in meter.state_tensors()])


@torch.no_grad()
def evaluate_grading(predict, loader, tasks, device, amp="off", desc="eval grading"):
    """Accuracy, quadratic kappa, confusion and recall per classification task; joint RG+MER accuracy.

    tasks: classification-side Tasks (codebase/tasks.py). Returns {"rg_accuracy": ...,
    "joint_accuracy": ...} and "routing" when the model routes.
    """
    meters = {task.name: task.kind.make_meter(task) for task in tasks}
    by_key = {task.key: task.name for task in tasks}
    joint = JointAccuracyMeter() if {"rg", "mer"} <= set(by_key) else None
    routing = RoutingMeter()
    information, codes = _information_meter(loader, graded=True)
    for batch in progress(loader, desc, total=len(loader)):
        images = batch["image"].to(device, non_blocking=True)
        with autocast(device, amp):
            out = predict(images)
        grades = {key: batch[key].to(device) for key in ("rg", "mer")}
        logits = {task.name: out["logits"][task.name].float() for task in tasks}
        targets = {task.name: task.target_of(grades) for task in tasks}
        for name, meter in meters.items():
            meter.update(logits[name], targets[name])
        if joint is not None:
            rg, mer = by_key["rg"], by_key["mer"]
            joint.update(logits[rg], logits[mer], targets[rg], targets[mer])
        routing.update(out.get("routing", {}))
        information.update(out.get("routing", {}), codes(batch))
    _reduce(list(meters.values()) + [routing, information] + ([joint] if joint else []))
    results = {}
    for task in tasks:
        results.update({f"{task.key}_{name}": value for name, value in meters[task.name].compute().items()})
    if joint is not None:
        results["joint_accuracy"] = joint.compute()
    if routing.sums:
        results["routing"] = _with_information(routing.compute(), information)
    return results


@torch.no_grad()
def evaluate_segmentation(predict, loader, tasks, device, amp="off", threshold=0.5, desc="eval segmentation",
                          keep_meter=False):
    """Per target IoU, Dice, sensitivity, precision at ``threshold`` and AUPR; their means.

    tasks: segmentation-side Tasks, each one channel. With ``keep_meter`` the SegmentationMeter
    (for precision-recall curves) is returned as well.
    """
    meter = SegmentationMeter([task.key for task in tasks], threshold=threshold)
    routing = RoutingMeter()
    information, codes = _information_meter(loader, graded=False)
    for batch in progress(loader, desc, total=len(loader)):
        images = batch["image"].to(device, non_blocking=True)
        with autocast(device, amp):
            out = predict(images)
        probs = torch.cat([torch.sigmoid(out["logits"][task.name].float()) for task in tasks], dim=1)  # [B, T, H, W]
        masks = {"masks": batch["masks"].to(device, non_blocking=True)}
        meter.update(probs, torch.cat([task.target_of(masks) for task in tasks], dim=1))
        routing.update(out.get("routing", {}))
        information.update(out.get("routing", {}), codes(batch))
    _reduce([meter, routing, information])
    results = meter.compute()
    if routing.sums:
        results["routing"] = _with_information(routing.compute(), information)
    return (results, meter) if keep_meter else results
