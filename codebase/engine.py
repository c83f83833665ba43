"""Training and evaluation of the multi-task model.

One optimizer step sees one grading batch (through the classification side) and one
segmentation batch (through the segmentation side). The loss is a weighted sum of the per-task
losses (fixed weights or learned uncertainty weighting) plus the gate regularisers; every
component is logged. Evaluation runs each split through the side it has labels for only.
"""
import torch
from torch import nn

from codebase.evaluation.evaluate import (
    RoutingMeter,
    evaluate_grading,
    evaluate_segmentation,
)
from codebase.tasks import on_side
from codebase.training import distributed
from codebase.training.loop import train_steps
from codebase.training.losses import (
    UncertaintyWeighting,
    gate_entropy,
    gate_load_balance,
    gate_sparsity,
    gate_switch_balance,
)

WEIGHTINGS = ("fixed", "uncertainty")
GATE_REGULARISERS = {  # name -> (Routing -> scalar)
    "sparsity": lambda routing: gate_sparsity(routing.weights),
    "load_balance": lambda routing: gate_load_balance(routing.weights),
    "entropy": lambda routing: gate_entropy(routing.weights),
    # dense routing runs every expert: balance each image's top-1 choice instead of the all-ones mask
    "switch_balance": lambda routing: gate_switch_balance(routing.weights, None if routing.dense else routing.mask),
}


class MultiTaskLoss(nn.Module):
    """Per-task losses, their weighting, and the gate regularisers.

    forward(logits {task: tensor}, targets {task: tensor}, routings {task: Routing}) ->
    (total, components): components are detached scalars "loss_<task>", "loss_gate_<name>" and,
    per segmentation task, its focal and Dice parts.
    """

    def __init__(self, tasks, loss_config=None, weighting="fixed", task_weights=None, gate_weights=None):
        super().__init__()
        loss_config = loss_config or {}
        if weighting not in WEIGHTINGS:
            raise ValueError(f"loss.weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        names = [task.name for task in tasks]
        unknown = set(task_weights or {}) - set(names)
        if unknown:
            raise ValueError(f"loss.task_weights names tasks not in task_specs: {sorted(unknown)}")
        unknown = set(gate_weights or {}) - set(GATE_REGULARISERS)
        if unknown:
            raise ValueError(f"unknown gate regularisers {sorted(unknown)}; known: {sorted(GATE_REGULARISERS)}")
        self.tasks = list(tasks)
        self.losses = nn.ModuleDict({task.name: task.make_loss(loss_config) for task in self.tasks})
        self.task_weights = {name: float((task_weights or {}).get(name, 1.0)) for name in names}
        self.uncertainty = UncertaintyWeighting(names) if weighting == "uncertainty" else None
        self.gate_weights = {name: float(w) for name, w in (gate_weights or {}).items() if w}

    def forward(self, logits, targets, routings):
        task_losses, components = {}, {}
        for task, output in logits.items():
            task_losses[task], parts = self.losses[task](output, targets[task])
            components.update({f"loss_{task}_{part}": value for part, value in parts.items() if "_" not in part})
        if self.uncertainty is not None:
            total = self.uncertainty(task_losses)
        else:
            total = sum(self.task_weights[task] * loss for task, loss in task_losses.items())
        for name, weight in self.gate_weights.items():
            value = torch.stack([GATE_REGULARISERS[name](r) for r in routings.values()]).mean()
            total = total + weight * value
            components[f"loss_gate_{name}"] = value.detach()
        components.update({f"loss_{task}": loss.detach() for task, loss in task_losses.items()})
        return total, components


class TrainStep(nn.Module):
    """Model + loss as one module, so one forward call (and one DDP wrapper) covers a whole step."""

    def __init__(self, model, criterion):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, grading_images, grading_targets, segmentation_images, segmentation_targets, dense):
        graded = self.model(grading_images, side="classification", dense=dense)
        segmented = self.model(segmentation_images, side="segmentation", dense=dense)
        logits = {**graded["logits"], **segmented["logits"]}
        routings = {**graded["routing"], **segmented["routing"]}
        total, components = self.criterion(logits, {**grading_targets, **segmentation_targets}, routings)
        return total, components, routings


def train_one_epoch(step, optimizer, streams, epoch, iterations, device, amp="off", scaler=None, dense=False,
                    channels_last=False):
    """``iterations`` optimizer steps; returns mean loss components and routing statistics.

    step: a TrainStep (possibly DDP-wrapped); streams: {"grading": BatchStream, "segmentation": ...}.
    """
    tasks = distributed.unwrap(step).criterion.tasks
    classification, segmentation = on_side(tasks, "classification"), on_side(tasks, "segmentation")
    step.train()
    grading_batches, segmentation_batches = streams["grading"].epoch(epoch), streams["segmentation"].epoch(epoch)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    routing = RoutingMeter()

    def loss_of(pair):
        graded, segmented = pair
        grading_images = graded["image"].to(device, non_blocking=True, memory_format=memory_format)
        segmentation_images = segmented["image"].to(device, non_blocking=True, memory_format=memory_format)
        grades = {key: graded[key].to(device, non_blocking=True) for key in ("rg", "mer")}
        masks = {"masks": segmented["masks"].to(device, non_blocking=True)}
        grading_targets = {task.name: task.target_of(grades) for task in classification}
        segmentation_targets = {task.name: task.target_of(masks) for task in segmentation}
        return step(grading_images, grading_targets, segmentation_images, segmentation_targets, dense)

    pairs = ((next(grading_batches), next(segmentation_batches)) for _ in range(iterations))
    means = train_steps(pairs, loss_of, optimizer, device, amp, scaler, epoch, total=iterations,
                        after_step=routing.update)
    return {"loss": means.pop("loss"), "components": means, "routing": routing.compute(), "dense_routing": float(dense)}


def evaluate(model, loaders, device, amp="off"):
    """Test metrics: {"grading": {...}, "segmentation": {...}, "routing": {task: ...}}.

    loaders: {"grading": loader, "segmentation": loader}; either may be None to skip that side.
    """
    model = distributed.unwrap(model)
    model.eval()
    results, routing = {}, {}
    if loaders.get("grading") is not None and model.classification_tasks:
        grading = evaluate_grading(lambda x: model(x, side="classification"), loaders["grading"],
                                   on_side(model.tasks, "classification"), device, amp)
        routing.update(grading.pop("routing", {}))
        results["grading"] = grading
    if loaders.get("segmentation") is not None and model.segmentation_tasks:
        segmentation = evaluate_segmentation(lambda x: model(x, side="segmentation"), loaders["segmentation"],
                                             on_side(model.tasks, "segmentation"), device, amp)
        routing.update(segmentation.pop("routing", {}))
        results["segmentation"] = segmentation
    results["routing"] = routing
    return results
