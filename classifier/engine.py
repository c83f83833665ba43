"""Training and evaluation loops of the baseline grading classifier."""
from torch import nn

from codebase.dataset import classification_targets
from codebase.evaluation import evaluate_grading
from codebase.harness import train_steps
from codebase.idrid import NUM_MER_CLASSES, NUM_RG_CLASSES
from codebase.losses import classification_loss

TASKS = {"classification_rg": NUM_RG_CLASSES, "classification_mer": NUM_MER_CLASSES}


class GradingLoss(nn.Module):
    """rg_weight * loss(RG) + mer_weight * loss(MER), each focal or cross-entropy.

    forward(logits {task: [B, C]}, targets {task: [B]}) -> (total, {"loss_rg": t, "loss_mer": t}).
    class_weights: None or {"rg": [5], "mer": [3]}.
    """

    def __init__(self, kind="focal", gamma=2.0, rg_weight=1.0, mer_weight=1.0, class_weights=None):
        super().__init__()
        self.losses = nn.ModuleDict({
            task: classification_loss(kind, gamma, None if class_weights is None else class_weights[task.split("_")[1]])
            for task in TASKS})
        self.weights = {"classification_rg": float(rg_weight), "classification_mer": float(mer_weight)}

    def forward(self, logits, targets):
        parts = {task: self.losses[task](logits[task].float(), targets[task]) for task in TASKS}
        total = sum(self.weights[task] * loss for task, loss in parts.items())
        return total, {"loss_" + task.split("_")[1]: loss.detach() for task, loss in parts.items()}


def train_one_epoch(model, criterion, optimizer, loader, epoch, device, amp="off", scaler=None):
    """One pass over ``loader``; returns the mean {"loss", "loss_rg", "loss_mer"} over its steps.

    Stops early (after a step) when the harness says so; raises NonFiniteLossError on a NaN loss.
    """
    model.train()

    def loss_of(batch):
        images = batch["image"].to(device, non_blocking=True)  # [B, 3, H, W]
        targets = classification_targets(list(TASKS), batch["rg"].to(device, non_blocking=True),
                                          batch["mer"].to(device, non_blocking=True))  # {task: [B]}
        return criterion(model(images), targets)

    return train_steps(loader, loss_of, optimizer, device, amp, scaler, epoch, total=len(loader))


def evaluate(model, loader, device, amp="off"):
    """Test metrics of codebase.evaluation.evaluate_grading: rg_/mer_ accuracy, kappa, confusion,
    recall, and joint_accuracy."""
    model.eval()
    return evaluate_grading(lambda images: {"logits": model(images)}, loader, list(TASKS), TASKS, device, amp)
