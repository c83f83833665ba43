"""Evaluation over a whole split, shared by the three models, the notebooks and compare_models.py.

A model is seen through a ``predict(images) -> {"logits": {task: tensor}, "routing": {...}}``
function ("routing" only for the multi-task model). Grading images go through the
classification tasks only, segmentation images through the segmentation tasks only. Under
several processes each rank evaluates its shard and the meters' counts are summed, so the
result equals a single-process evaluation of the same model on the same data.
"""
import torch

from codebase import distributed
from codebase.dataset import classification_targets, segmentation_targets
from codebase.harness import autocast, progress
from codebase.metrics import ClassificationMeter, SegmentationMeter


def task_key(task):
    """'classification_rg' -> 'rg'; 'segmentation_ma' -> 'MA' (lesion codes are upper case)."""
    kind, key = task.split("_", 1)
    return key.upper() if kind == "segmentation" else key


class RoutingMeter:
    """Per task: how many experts each image ran, and the share of images that ran each expert."""

    def __init__(self):
        self.sums = {}  # task -> int64 [E + 2]: per-expert selections, experts run, images (exact counts)

    def update(self, routings):
        for task, routing in routings.items():
            mask = routing.mask.detach()
            row = torch.cat([mask.sum(dim=0), mask.sum().view(1), torch.tensor([mask.shape[0]], device=mask.device)])
            total = self.sums.get(task)
            self.sums[task] = row if total is None else total + row

    def state_tensors(self):
        return [self.sums[task] for task in sorted(self.sums)]

    def compute(self):
        result = {}
        for task in sorted(self.sums):
            *selections, experts_run, images = self.sums[task].tolist()
            result[task] = {"experts_per_image": experts_run / images, "usage": [s / images for s in selections]}
        return result


class JointAccuracyMeter:
    """Images whose RG and MER are both right, out of all images."""

    def __init__(self, device):
        self.counts = torch.zeros(2, dtype=torch.int64, device=device)  # [both right, images]

    def update(self, rg_logits, mer_logits, rg, mer):
        both = (rg_logits.argmax(dim=1) == rg) & (mer_logits.argmax(dim=1) == mer)  # [B]
        self.counts += torch.stack([both.sum(), torch.tensor(both.numel(), device=both.device)])

    def state_tensors(self):
        return [self.counts]

    def compute(self):
        both, images = self.counts.tolist()
        return both / images


def _reduce(meters):
    if distributed.is_distributed():
        distributed.all_reduce_sum([t for meter in meters for t in meter.state_tensors()])


@torch.no_grad()
def evaluate_grading(predict, loader, tasks, num_classes, device, amp="off", desc="eval grading"):
    """Accuracy, quadratic kappa, confusion and recall per classification task; joint RG+MER accuracy.

    tasks: classification task names; num_classes: {task: classes}. Returns {"rg_accuracy": ...,
    "joint_accuracy": ...} and "routing" when the model routes.
    """
    meters = {task: ClassificationMeter(num_classes[task]) for task in tasks}
    joint = JointAccuracyMeter(device) if {"classification_rg", "classification_mer"} <= set(tasks) else None
    routing = RoutingMeter()
    for batch in progress(loader, desc, total=len(loader)):
        images = batch["image"].to(device, non_blocking=True)
        with autocast(device, amp):
            out = predict(images)
        logits = {task: out["logits"][task].float() for task in tasks}
        targets = classification_targets(tasks, batch["rg"].to(device), batch["mer"].to(device))
        for task in tasks:
            meters[task].update(logits[task], targets[task])
        if joint is not None:
            joint.update(logits["classification_rg"], logits["classification_mer"],
                         targets["classification_rg"], targets["classification_mer"])
        routing.update(out.get("routing", {}))
    _reduce(list(meters.values()) + [routing] + ([joint] if joint else []))
    results = {}
    for task, meter in meters.items():
        results.update({f"{task_key(task)}_{name}": value for name, value in meter.compute().items()})
    if joint is not None:
        results["joint_accuracy"] = joint.compute()
    if routing.sums:
        results["routing"] = routing.compute()
    return results


@torch.no_grad()
def evaluate_segmentation(predict, loader, tasks, device, amp="off", threshold=0.5, desc="eval segmentation",
                          keep_meter=False):
    """Per target IoU, Dice, sensitivity, precision at ``threshold`` and AUPR; their means.

    tasks: segmentation task names, each one channel. With ``keep_meter`` the SegmentationMeter
    (for precision-recall curves) is returned as well.
    """
    meter = SegmentationMeter([task_key(t) for t in tasks], threshold=threshold)
    routing = RoutingMeter()
    for batch in progress(loader, desc, total=len(loader)):
        images = batch["image"].to(device, non_blocking=True)
        with autocast(device, amp):
            out = predict(images)
        probs = torch.cat([torch.sigmoid(out["logits"][t].float()) for t in tasks], dim=1)  # [B, T, H, W]
        targets = segmentation_targets(tasks, batch["masks"].to(device, non_blocking=True))
        meter.update(probs, torch.cat([targets[t] for t in tasks], dim=1))
        routing.update(out.get("routing", {}))
    _reduce([meter, routing])
    results = meter.compute()
    if routing.sums:
        results["routing"] = routing.compute()
    return (results, meter) if keep_meter else results
