"""Training and evaluation loops of the baseline grading classifier."""
from torch import nn

from classifier.model import TASKS
from codebase.evaluation.evaluate import evaluate_grading
from codebase.training.loop import train_steps
from codebase.training.losses import classification_loss


class GradingLoss(nn.Module):
    """sum_t w_t loss(t) over RG and MER (task_weights {task: weight}, unlisted tasks 1), each focal or
    cross-entropy.

    forward(logits {task: [B, C]}, targets {task: [B]}) -> (total, {"loss_classification_rg": t,
    "loss_classification_mer": t}), the components named "loss_<task>" as in the multi-task model.
    class_weights: None or {"rg": [5], "mer": [3]}.
    """

    def __init__(self, kind="focal", gamma=2.0, task_weights=None, class_weights=None):
        super().__init__()
        self.losses = nn.ModuleDict({
            task.name: classification_loss(kind, gamma, None if class_weights is None else class_weights[task.key])
            for task in TASKS})
        self.weights = {task.name: float((task_weights or {}).get(task.name, 1.0)) for task in TASKS}

    def forward(self, logits, targets):
        parts = {task.key: self.losses[task.name](logits[task.name].float(), targets[task.name]) for task in TASKS}
        total = sum(self.weights[task.name] * parts[task.key] for task in TASKS)
        return total, {f"loss_{task.name}": parts[task.key].detach() for task in TASKS}


def train_one_epoch(model, criterion, optimizer, loader, epoch, device, amp="off", scaler=None):
    """One pass over ``loader``; returns the means over its steps {"loss", "components":
    {"loss_classification_rg", "loss_classification_mer"}}.

    Stops early (after a step) on SIGINT/SIGTERM; raises NonFiniteLossError on a NaN loss.
    """
    model.train()

    def loss_of(batch):
        images = batch["image"].to(device, non_blocking=True)  # [B, 3, H, W]
        grades = {key: batch[key].to(device, non_blocking=True) for key in ("rg", "mer")}
        targets = {task.name: task.target_of(grades) for task in TASKS}  # {task: [B]}
        return criterion(model(images), targets)

    means = train_steps(loader, loss_of, optimizer, device, amp, scaler, epoch, total=len(loader))
    return {"loss": means.pop("loss"), "components": means}


def evaluate(model, loader, device, amp="off"):
    """Metrics of codebase.evaluation.evaluate_grading: rg_/mer_ accuracy, kappa, confusion, recall,
    and joint_accuracy (train_classifier.py records them under "grading", as the multi-task model does)."""
    model.eval()
    return evaluate_grading(lambda images: {"logits": model(images)}, loader, TASKS, device, amp)
