"""Training and evaluation of the multi-task model.

One optimizer step sees one grading batch (through the classification side) and one
segmentation batch (through the segmentation side). The per-task losses are combined by a loss
weighting from codebase/training/weighting.py (``loss.weighting``: a weighted sum, or a method
that balances the per-task gradients of the shared backbone and ASPP), and the gate regularisers
are added with their own fixed weights. Every component and the task weights each step used are
logged. Evaluation runs each split through the side it has labels for only.
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
from codebase.training.device import autocast
from codebase.training.loop import train_steps
from codebase.training.losses import (
    gate_balanced_assignment,
    gate_entropy,
    gate_load_balance,
    gate_sparsity,
    gate_switch_balance,
)

GATE_REGULARISERS = {  # name -> (Routing -> scalar)
    "sparsity": lambda routing: gate_sparsity(routing.weights),
    "load_balance": lambda routing: gate_load_balance(routing.weights),
    "entropy": lambda routing: gate_entropy(routing.weights),
    # dense routing runs every expert: balance each image's top-1 choice instead of the all-ones mask
    "switch_balance": lambda routing: gate_switch_balance(routing.weights, None if routing.dense else routing.mask),
    "balanced_assignment": lambda routing: gate_balanced_assignment(routing.weights),
}


def gate_weights(loss_config):
    """{regulariser: weight} from a run's ``loss`` settings (``gate_<name>``; 0 where a run written
    before the regulariser existed does not name it)."""
    return {name: loss_config.get(f"gate_{name}", 0.0) for name in GATE_REGULARISERS}


class MultiTaskLoss(nn.Module):
    """Per-task losses and the gate regularisers.

    forward(logits {task: tensor}, targets {task: tensor}, routings {task: Routing}) ->
    (task losses {task: scalar}, gate term (scalar or None), components): components are detached
    scalars "loss_<task>", "loss_gate_<name>" and, per segmentation task, its focal and Dice parts.
    """

    def __init__(self, tasks, loss_config=None, gate_weights=None):
        super().__init__()
        unknown = set(gate_weights or {}) - set(GATE_REGULARISERS)
        if unknown:
            raise ValueError(f"unknown gate regularisers {sorted(unknown)}; known: {sorted(GATE_REGULARISERS)}")
        self.tasks = list(tasks)
        self.losses = nn.ModuleDict({task.name: task.make_loss(loss_config or {}) for task in self.tasks})
        self.gate_weights = {name: float(w) for name, w in (gate_weights or {}).items() if w}

    def forward(self, logits, targets, routings):
        task_losses, components = {}, {}
        for task, output in logits.items():
            task_losses[task], parts = self.losses[task](output, targets[task])
            components.update({f"loss_{task}_{part}": value for part, value in parts.items() if "_" not in part})
        gate = None
        for name, weight in self.gate_weights.items():
            value = torch.stack([GATE_REGULARISERS[name](r) for r in routings.values()]).mean()
            gate = weight * value if gate is None else gate + weight * value
            components[f"loss_gate_{name}"] = value.detach()
        components.update({f"loss_{task}": loss.detach() for task, loss in task_losses.items()})
        return task_losses, gate, components


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
        task_losses, gate, components = self.criterion(logits, {**grading_targets, **segmentation_targets}, routings)
        return task_losses, gate, components, routings


def shared_parameters(model):
    """The parameters every task shares: the backbone's, and the ASPP's (shared by the lesion tasks)."""
    model = distributed.unwrap(model)
    modules = [model.backbone] + ([model.aspp] if model.aspp is not None else [])
    return [p for module in modules for p in module.parameters() if p.requires_grad]


def train_one_epoch(step, weighting, optimizer, streams, epoch, iterations, device, amp="off", scaler=None,
                    dense=False, channels_last=False, balance_rate=0.0):
    """``iterations`` optimizer steps; returns mean loss components, the task weights the steps used
    (mean over the epoch) and routing statistics.

    balance_rate: after every step, each gate's selection bias moves by this much towards equal
    first-choice shares (loss-free load balancing; 0 leaves the biases alone).

    step: a TrainStep (possibly DDP-wrapped); weighting: a codebase.training.weighting.Weighting;
    streams: {"grading": BatchStream, "segmentation": ...}.
    """
    unwrapped = distributed.unwrap(step)
    tasks = unwrapped.criterion.tasks
    classification, segmentation = on_side(tasks, "classification"), on_side(tasks, "segmentation")
    shared = shared_parameters(unwrapped.model)
    weighting.reduce = distributed.all_reduce_mean if distributed.is_distributed() else None
    step.train()
    grading_batches, segmentation_batches = streams["grading"].epoch(epoch), streams["segmentation"].epoch(epoch)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    routing = RoutingMeter()
    weight_sums, steps = {}, 0

    def inputs_of(pair):
        graded, segmented = pair
        grading_images = graded["image"].to(device, non_blocking=True, memory_format=memory_format)
        segmentation_images = segmented["image"].to(device, non_blocking=True, memory_format=memory_format)
        grades = {key: graded[key].to(device, non_blocking=True) for key in ("rg", "mer")}
        masks = {"masks": segmented["masks"].to(device, non_blocking=True)}
        return (grading_images, {task.name: task.target_of(grades) for task in classification},
                segmentation_images, {task.name: task.target_of(masks) for task in segmentation}, dense)

    def loss_of(pair):
        inputs = inputs_of(pair)
        task_losses, gate, components, routings = step(*inputs)
        total = weighting.combine(task_losses)  # the weighted sum (a gradient method: the plain sum)
        if gate is not None:
            total = total + gate
        return total, components, routings, task_losses, gate, inputs, total

    def backward_of(routings, task_losses, gate, inputs, total):
        if weighting.owns_backward:
            return lambda: weighting.backward(task_losses, gate, shared, scaler, distributed.all_reduce_mean)
        if distributed.is_distributed() and weighting.extra_parameters():
            return lambda: weighting.backward_combined(total, scaler, distributed.all_reduce_mean)
        return None  # the combined loss is backpropagated as it is

    def after_step(routings, task_losses, gate, inputs, total):
        nonlocal steps
        routing.update(routings)
        if balance_rate:
            unwrapped.model.update_selection_biases(routings, balance_rate, distributed.all_reduce_sum)
        for task, weight in weighting.task_weights().items():
            weight_sums[task] = weight_sums.get(task, 0.0) + weight
        steps += 1
        if weighting.needs_losses_after:  # FAMO: the same batch's losses after the step, in training mode
            with torch.no_grad(), autocast(device, amp):
                losses_after = step(*inputs)[0]
            weighting.after_step(losses_after, distributed.all_reduce_mean)

    pairs = ((next(grading_batches), next(segmentation_batches)) for _ in range(iterations))
    means = train_steps(pairs, loss_of, optimizer, device, amp, scaler, epoch, total=iterations,
                        after_step=after_step, backward_of=backward_of)
    task_means = distributed.all_reduce_mean(torch.tensor([means[f"loss_{task.name}"] for task in tasks],
                                                          dtype=torch.float32))
    weighting.end_epoch(epoch, {task.name: float(value) for task, value in zip(tasks, task_means)})
    return {"loss": means.pop("loss"), "components": means,
            "task_weights": {task: total / max(steps, 1) for task, total in weight_sums.items()},
            "routing": routing.compute(), "dense_routing": float(dense)}


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
