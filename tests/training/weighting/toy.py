"""What the weighting tests share: two task names, scalar losses, and a two-task toy model."""
import torch
from torch import nn

from codebase.training.weighting import installed_weightings

TASKS = ("a", "b")


def losses_of(*values, requires_grad=False):
    return {task: torch.tensor(float(v), requires_grad=requires_grad) for task, v in zip(TASKS, values)}


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 3)
        self.head_a, self.head_b = nn.Linear(3, 1), nn.Linear(3, 1)

    def forward(self, inputs, targets):
        features = torch.tanh(self.shared(inputs))
        loss_a = (self.head_a(features).squeeze(1) - targets[:, 0]).pow(2).mean()
        loss_b = (self.head_b(features).squeeze(1) - targets[:, 1]).pow(2).mean()
        extra = 0.1 * features.pow(2).mean()
        return {"a": loss_a, "b": loss_b}, extra


def batch():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(16, 4, generator=generator)
    targets = torch.stack([inputs[:, 0] * 2, -inputs[:, 0] + inputs[:, 1]], 1)
    return inputs, targets


def gram_of(*grads):
    matrix = torch.tensor(grads, dtype=torch.float64)
    return matrix, matrix @ matrix.T


METHODS = sorted(installed_weightings())  # Nash-MTL where its optional cvxpy is installed


def train_toy(model, weighting, steps, start=0, device="cpu"):
    """SGD steps (stateless optimizer) on the toy model; the task weights after each step."""
    optimizer = torch.optim.SGD(list(model.parameters()) + weighting.extra_parameters(), lr=0.05)
    inputs, targets = (t.to(device) for t in batch())
    seen = []
    for step in range(start + 1, start + steps + 1):
        optimizer.zero_grad(set_to_none=True)
        losses, extra = model(inputs, targets)
        weighting.backward(losses, extra, list(model.shared.parameters()))
        optimizer.step()
        with torch.no_grad():
            weighting.after_step(model(inputs, targets)[0])
        weighting.end_epoch(step, {t: float(v.detach()) for t, v in losses.items()})
        seen.append(list(weighting.task_weights().values()))
    return seen
