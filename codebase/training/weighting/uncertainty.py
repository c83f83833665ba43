"""Learned homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""
import torch
from torch import nn

from codebase.training.weighting.base import Weighting
from codebase.training.weighting.registry import register


@register("uncertainty")
class UncertaintyWeighting(Weighting):
    """sum_t exp(-s_t) L_t + s_t with one learnable log-variance s_t per task (start 0, weight 1);
    the same form for every task (the regression form's factors 1/2 dropped). ``log_variances``
    go into the model's optimizer (``extra_parameters``). Weights reported: exp(-s_t).
    """

    setting_prefix = "uncertainty_"

    def __init__(self, tasks):
        super().__init__(tasks)
        self.log_variances = nn.Parameter(torch.zeros(len(self.tasks)))

    def combine(self, losses):
        indices = self.present(losses)
        log_variances = self.log_variances[indices]
        self.record(indices, torch.exp(-log_variances.detach()))
        return (torch.exp(-log_variances) * self.loss_vector(losses, indices) + log_variances).sum()

    def extra_parameters(self):
        return [self.log_variances]
