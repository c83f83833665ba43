"""Training and evaluation of the multi-task model.

One optimizer step (`MultiTaskTraining.train_step`) sees one grading batch (through the
grading side) and one segmentation batch (through the segmentation side). The loss
weighting (``loss.weighting``, a codebase.training.weighting entry: a weighted sum, or a method
that balances the per-task gradients of the shared backbone and ASPP) writes the step's gradients
in one call, ``weighting.backward``; the gate regularisers are added with their own fixed weights.
Every component and the task weights each step used are logged. Evaluation runs each split
through the side it has labels for only.
"""
import torch
from torch import nn

from codebase.data.patches import WINDOW_OVERLAP
from codebase.evaluation.evaluate import (
    RoutingMeter,
    evaluate_grading,
)
from codebase.evaluation.lesions import lesion_metrics
from codebase.runtime import distributed
from codebase.runtime.device import autocast
from codebase.tasks import on_side
from codebase.training.loop import run_steps, step_optimizer
from codebase.training.losses import (
    gate_balanced_assignment,
    gate_entropy,
    gate_load_balance,
    gate_sparsity,
    gate_switch_balance,
)
from codebase.training.stopping import check_finite

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
        graded = self.model(grading_images, side="grading", dense=dense)
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


def step_inputs(pair, tasks, device, dense, memory_format=torch.contiguous_format):
    """TrainStep's arguments for one (grading batch, segmentation batch) pair of training batches
    ("image", "rg", "mer"; "image", "masks"), moved to ``device``: each side's images and its tasks' targets."""
    graded, segmented = pair
    grading_images = graded["image"].to(device, non_blocking=True, memory_format=memory_format)
    segmentation_images = segmented["image"].to(device, non_blocking=True, memory_format=memory_format)
    grades = {key: graded[key].to(device, non_blocking=True) for key in ("rg", "mer")}  # {key: [B]}
    masks = {"masks": segmented["masks"].to(device, non_blocking=True)}  # [B, 5 lesions, H, W]
    return (grading_images, {task.name: task.target_of(grades) for task in on_side(tasks, "grading")},
            segmentation_images, {task.name: task.target_of(masks) for task in on_side(tasks, "segmentation")}, dense)


class MultiTaskTraining:
    """The training steps of a multi-task run: what every step uses, and one step that reads top to bottom.

    step: a TrainStep (model + loss; possibly DDP-wrapped); weighting: a
    codebase.training.weighting.Weighting; balance_rate: after every step, each gate's selection
    bias moves by this much towards equal first-choice shares (loss-free load balancing; 0 leaves
    the biases alone).
    """

    def __init__(self, step, weighting, optimizer, device, amp="off", scaler=None, channels_last=False,
                 balance_rate=0.0):
        self.step, self.weighting, self.optimizer, self.scaler = step, weighting, optimizer, scaler
        self.device, self.amp, self.balance_rate = device, amp, balance_rate
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        unwrapped = distributed.unwrap(step)
        self.model = unwrapped.model
        self.tasks = unwrapped.criterion.tasks
        self.shared = shared_parameters(self.model)
        shared = {id(parameter) for parameter in self.shared}
        self.task_specific = [p for p in unwrapped.parameters() if p.requires_grad and id(p) not in shared]
        weighting.reduce = distributed.all_reduce_mean if distributed.is_distributed() else None

    def train_step(self, pair, dense, epoch, number):
        """One optimizer step on (grading batch, segmentation batch); returns (loss, components, routings).

        dense: every expert runs (warm-up) instead of top-p; epoch, number: where the step is, for
        the message of a non-finite loss.
        """
        inputs = step_inputs(pair, self.tasks, self.device, dense, self.memory_format)

        with autocast(self.device, self.amp):  # both sides forward, per-task losses, gate regularisers
            task_losses, gate, components, routings = self.step(*inputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.weighting.backward(task_losses, gate, self.shared, self.scaler, self.task_specific)  # every .grad
        check_finite(loss, components, step=number, epoch=epoch)
        step_optimizer(self.optimizer, self.scaler)

        if self.balance_rate:
            self.model.update_selection_biases(routings, self.balance_rate, distributed.all_reduce_sum)
        if self.weighting.needs_losses_after:  # FAMO: the same batch's losses after the step, in training mode
            with torch.no_grad(), autocast(self.device, self.amp):
                self.weighting.after_step(self.step(*inputs)[0])
        return loss, components, routings

    def train_one_epoch(self, streams, epoch, iterations, dense=False):
        """``iterations`` optimizer steps; returns the mean loss components, the task weights the steps
        used (mean over the epoch) and routing statistics.

        streams: {"grading": BatchStream, "segmentation": BatchStream}.
        """
        self.step.train()
        grading, segmentation = streams["grading"].epoch(epoch), streams["segmentation"].epoch(epoch)
        routing, weights = RoutingMeter(), {"sum": None, "steps": 0}

        def one_step(pair, number):
            loss, components, routings = self.train_step(pair, dense, epoch, number)
            routing.update(routings)
            step_weights = self.weighting.last_weights.double()  # summed where they are: read once an epoch
            weights["sum"] = step_weights if weights["sum"] is None else weights["sum"] + step_weights
            weights["steps"] += 1
            return loss, components

        pairs = ((next(grading), next(segmentation)) for _ in range(iterations))
        means = run_steps(pairs, one_step, epoch, total=iterations)
        task_means = distributed.all_reduce_mean(torch.tensor([means[f"loss_{task.name}"] for task in self.tasks],
                                                              dtype=torch.float32))
        self.weighting.end_epoch(epoch, {task.name: float(value) for task, value in zip(self.tasks, task_means)})
        return {"loss": means.pop("loss"), "components": means,
                "task_weights": {task: total / weights["steps"] for task, total in
                                 zip(self.weighting.tasks, [] if weights["sum"] is None else weights["sum"].tolist())},
                "routing": routing.compute(), "dense_routing": float(dense)}


def evaluate(model, loaders, device, amp="off", split="test", window=None, overlap=WINDOW_OVERLAP,
             full_resolution=False, cache_masks=False):
    """Metrics of a split: {"grading": {...}, "segmentation": {...}, "routing": {task: ...}}.

    loaders: {"grading": loader, "segmentation": loader}; either may be None to skip that side. The
    lesions are scored by codebase.evaluation.lesions.lesion_metrics (window, overlap,
    full_resolution and cache_masks as there; a sliding window gives no segmentation routing).
    """
    model = distributed.unwrap(model)
    model.eval()
    results, routing = {}, {}
    if loaders.get("grading") is not None and model.grading_tasks:
        grading = evaluate_grading(lambda x: model(x, side="grading"), loaders["grading"],
                                   on_side(model.tasks, "grading"), device, amp)
        routing.update(grading.pop("routing", {}))
        results["grading"] = grading
    if loaders.get("segmentation") is not None and model.segmentation_tasks:
        segmentation = lesion_metrics(lambda x: model(x, side="segmentation"), loaders["segmentation"],
                                      on_side(model.tasks, "segmentation"), split, window, overlap, device=device,
                                      amp=amp, full_resolution=full_resolution, cache_masks=cache_masks)
        routing.update(segmentation.pop("routing", {}))
        results["segmentation"] = segmentation
    results["routing"] = routing
    return results
