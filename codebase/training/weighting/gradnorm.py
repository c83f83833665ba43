"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018)."""
import math

import torch

from codebase.training.weighting.base import AdamState, GradientWeighting
from codebase.training.weighting.registry import (
    Setting,
    non_negative,
    positive,
    register,
)


@register("gradnorm")
class GradNorm(GradientWeighting):
    """Shared gradient sum_t w_t g_t. Then the weights take one Adam step (lr ``loss.gradnorm_lr``,
    their own update, not the model's optimizer) on sum_t |w_t ||g_t|| - target_t|, with
    target_t = mean_s(w_s ||g_s||) * r_t^alpha held constant, r_t = (L_t / L_t(0)) relative to the
    mean over tasks (inverse training rate); then clamped positive and renormalised to sum to T.
    ||g_t|| is the norm over all shared parameters; L_t(0) is the first loss seen for the task
    (that step records it and leaves the weights as they are).
    """

    setting_prefix = "gradnorm_"
    settings = {"alpha": Setting(1.5, float, non_negative, ">= 0"),
                "lr": Setting(0.025, float, positive, "> 0")}
    needs_losses = True

    def __init__(self, tasks, alpha=1.5, lr=0.025):
        super().__init__(tasks)
        self.alpha = alpha
        self.register_buffer("weights", torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), math.nan))
        self.weight_optimizer = AdamState(len(self.tasks), lr)

    def coefficients(self, indices, gram, losses):
        weights = self.weights[indices].cpu().double()  # [T']
        initial = self.initial_losses[indices].cpu().double()
        first_seen = torch.isnan(initial)
        if first_seen.any():  # a task's first step: record L_t(0), nothing to balance yet
            self.initial_losses[indices] = torch.where(first_seen, losses, initial).to(self.initial_losses)
            return weights
        norms = gram.diagonal().clamp_min(0).sqrt()  # [T'] ||g_t||
        if (initial > 0).all() and len(indices) > 1:
            ratios = losses / initial
            inverse_rates = ratios / ratios.mean()
            weighted_norms = weights * norms
            targets = weighted_norms.mean() * inverse_rates.pow(self.alpha)
            grad = torch.sign(weighted_norms - targets) * norms  # d/dw_t sum_s |w_s n_s - target_s|
            full = torch.zeros(len(self.tasks), dtype=torch.float64)
            full[indices] = grad
            stepped = self.weights.clone()  # every task's moments move; only the present tasks' weights
            self.weight_optimizer.step(stepped, full)
            updated = self.weights.clone()
            updated[indices] = stepped[indices].clamp_min(1e-6)
            self.weights.copy_(updated * len(self.tasks) / updated.sum())
        return weights
