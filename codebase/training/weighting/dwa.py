"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-end multi-task learning with attention")."""
import math

import torch

from codebase.training.weighting.base import Weighting
from codebase.training.weighting.registry import Setting, positive, register


@register("dwa")
class DynamicWeightAverage(Weighting):
    """Weights for epoch e: T * softmax_t(r_t / temperature), r_t = L_t(e-1) / L_t(e-2) from the
    epochs' mean training losses (``end_epoch``); weight 1 for each task in the first two epochs.
    """

    setting_prefix = "dwa_"
    settings = {"temperature": Setting(2.0, float, positive, "> 0")}

    def __init__(self, tasks, temperature=2.0):
        super().__init__(tasks)
        self.temperature = temperature
        self.register_buffer("loss_history", torch.full((2, len(self.tasks)), math.nan))
        self.register_buffer("weights", torch.ones(len(self.tasks)))

    def combine(self, losses):
        indices = self.present(losses)
        return self.weighted_sum(losses, indices, self.weights[indices])

    def end_epoch(self, epoch, mean_losses):
        missing = [t for t in self.tasks if t not in mean_losses]
        if missing:
            raise ValueError(f"DWA needs every task's mean loss at the end of epoch {epoch}; missing {missing}")
        values = torch.tensor([float(mean_losses[t]) for t in self.tasks], dtype=torch.float64)
        if not (torch.isfinite(values).all() and (values > 0).all()):
            raise ValueError(f"DWA needs positive finite mean losses, got {dict(zip(self.tasks, values.tolist()))} "
                             f"at epoch {epoch}")
        history = torch.stack([self.loss_history[1].cpu().double(), values])  # [2, T]: epochs e-2, e-1
        self.loss_history.copy_(history)
        if torch.isfinite(history).all():
            ratios = history[1] / history[0]  # [T]
            self.weights.copy_(len(self.tasks) * torch.softmax(ratios / self.temperature, dim=0))
