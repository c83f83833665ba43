"""Tasks: each ``task_specs`` entry parsed once into a `Task` that knows its kind, target and outputs.

A task is named ``<kind>_<target>`` (``classification_rg``, ``segmentation_ma``). Its kind is an
entry of the registry `TASK_KINDS`; the kind says which side of a training step the task reads
(``side``: the grading batch through pooled heads, or the segmentation batch through decoder
heads), which targets it knows, how its target is taken from a batch, and its loss. Nothing
else in the code looks at a task's name.

Targets of the two kinds shipped here:

- classification: a grade of the grading CSV (``rg``, ``mer``) or one derived from them
  (``referable``: RG >= 2, the usual referral threshold);
- segmentation: a lesion mask (``ma``, ``he``, ``ex``, ``se``, ``od``) or a union of them
  (``red``: MA or HE; ``bright``: EX or SE; ``lesions``: any of the four lesions).

A new task of a known target is one entry in ``task_specs``; a new target is one entry in its
kind's ``targets``; a new kind is one `register_task_kind` call.
"""
from dataclasses import dataclass, field
from typing import Callable

import torch

from codebase.config import ConfigError
from codebase.data.idrid import LESIONS, NUM_MER_CLASSES, NUM_RG_CLASSES
from codebase.evaluation.metrics import ClassificationMeter
from codebase.training.losses import SegmentationLoss, classification_loss

SIDES = ("grading", "segmentation")


@dataclass(frozen=True)
class Target:
    """How a task's target is read from a batch dict, and how many outputs it needs."""

    read: Callable[[dict], torch.Tensor]
    outputs: int | None  # None: any positive number of outputs


@dataclass(eq=False)  # identity: a kind is one registry entry, and Tasks holding it are hashable
class TaskKind:
    """One kind of task: the side of a step it trains on, its targets, and its loss.

    make_loss(task, loss_config) -> module called as loss(logits, target) -> (loss, {part: tensor}).
    make_meter(task) -> a meter with update(logits, targets), state_tensors() and compute() -> {name:
    value}, for classification-side tasks (segmentation-side tasks are binary masks, scored together
    by a SegmentationMeter so that their means come out too).
    metric_key(target) -> the name metrics use ("rg", "MA").
    """

    name: str
    side: str
    targets: dict[str, Target]
    make_loss: Callable
    make_meter: Callable | None = None
    primary_metric: str | None = None  # the score model selection averages ("kappa", "aupr")
    metric_key: Callable[[str], str] = field(default=lambda target: target)


TASK_KINDS: dict[str, TaskKind] = {}


def register_task_kind(kind: TaskKind) -> TaskKind:
    if kind.side not in SIDES:
        raise ValueError(f"task kind {kind.name!r}: side must be one of {SIDES}, got {kind.side!r}")
    TASK_KINDS[kind.name] = kind
    return kind


@dataclass(frozen=True)
class Task:
    """A parsed task_specs entry."""

    name: str
    kind: TaskKind
    target: str
    outputs: int

    @property
    def side(self) -> str:
        return self.kind.side

    @property
    def key(self) -> str:
        """The name metrics and predictions use: 'rg', 'mer', 'MA', ..."""
        return self.kind.metric_key(self.target)

    def target_of(self, batch: dict) -> torch.Tensor:
        """This task's target from a batch dict (tensors already on the device)."""
        return self.kind.targets[self.target].read(batch)

    def make_loss(self, loss_config: dict):
        return self.kind.make_loss(self, loss_config)


def parse_task(name: str, outputs) -> Task:
    """One task_specs entry -> Task; ConfigError naming ``model.task_specs.<name>`` when it is wrong."""
    where = f"model.task_specs.{name}"
    kind_name, _, target = str(name).partition("_")
    if kind_name not in TASK_KINDS or not target:
        raise ConfigError(f"{where}: a task is named <kind>_<target> with kind one of "
                          f"{', '.join(TASK_KINDS)} (e.g. 'segmentation_od')")
    kind = TASK_KINDS[kind_name]
    if target not in kind.targets:
        raise ConfigError(f"{where}: no {kind_name} target named {target!r}; known: "
                          f"{', '.join(kind_name + '_' + t for t in kind.targets)}")
    if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 1:
        raise ConfigError(f"{where}={outputs!r}: expected a whole number of outputs >= 1")
    needed = kind.targets[target].outputs
    if needed is not None and outputs != needed:
        raise ConfigError(f"{where}={outputs}: the {target} target needs {needed} output(s)")
    return Task(name, kind, target, outputs)


def parse_tasks(task_specs) -> list["Task"]:
    """{name: outputs} -> [Task] in the dict's order; ConfigError for an empty or wrong entry."""
    if not isinstance(task_specs, dict) or not task_specs:
        raise ConfigError(f"model.task_specs={task_specs!r}: expected a non-empty dict {{task name: outputs}}")
    return [parse_task(name, outputs) for name, outputs in task_specs.items()]


def task_label(name: str) -> str:
    """A task name's target as figures and printed lines show it: 'classification_rg' -> 'RG'."""
    return str(name).partition("_")[2].upper() or str(name).upper()


def on_side(tasks, side: str) -> list["Task"]:
    return [task for task in tasks if task.side == side]


def _classification_loss(task, config):
    criterion = classification_loss(config.get("classification", "focal"), config.get("focal_gamma", 2.0))
    return _LossWithoutParts(criterion)


def _segmentation_loss(task, config):
    return SegmentationLoss(config.get("segmentation_alpha", 0.75), config.get("segmentation_gamma", 4.0),
                            config.get("focal_weight", 1.0), config.get("dice_weight", 1.0), lesions=("mask",),
                            dice_on_absent=config.get("dice_on_absent", True))


class _LossWithoutParts(torch.nn.Module):
    """A criterion returning a scalar, seen as one returning (loss, {}) like SegmentationLoss."""

    def __init__(self, criterion):
        super().__init__()
        self.criterion = criterion

    def forward(self, logits, target):
        return self.criterion(logits.float(), target), {}


def _lesion_union(codes):
    channels = sorted(LESIONS.index(code) for code in codes)
    if channels == list(range(channels[0], channels[-1] + 1)):  # adjacent: a slice, no index tensor to send over
        first, end = channels[0], channels[-1] + 1
        return lambda batch: batch["masks"][:, first:end].amax(dim=1, keepdim=True)  # uint8 [B, 1, H, W]
    return lambda batch: batch["masks"][:, channels].amax(dim=1, keepdim=True)


register_task_kind(TaskKind(
    name="classification", side="grading",
    targets={"rg": Target(lambda batch: batch["rg"], NUM_RG_CLASSES),
             "mer": Target(lambda batch: batch["mer"], NUM_MER_CLASSES),
             "referable": Target(lambda batch: (batch["rg"] >= 2).long(), 2)},
    make_loss=_classification_loss, make_meter=lambda task: ClassificationMeter(task.outputs),
    primary_metric="kappa"))

_SEGMENTATION_TARGETS = {code.lower(): (code,) for code in LESIONS}
_SEGMENTATION_TARGETS.update({"red": ("MA", "HE"), "bright": ("EX", "SE"), "lesions": ("MA", "HE", "EX", "SE")})
register_task_kind(TaskKind(
    name="segmentation", side="segmentation",
    targets={name: Target(_lesion_union(codes), 1) for name, codes in _SEGMENTATION_TARGETS.items()},
    make_loss=_segmentation_loss, primary_metric="aupr", metric_key=str.upper))
