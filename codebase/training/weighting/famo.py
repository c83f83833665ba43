"""FAMO (Liu, Liu, Stone & Liu, NeurIPS 2023, "FAMO: Fast Adaptive Multitask Optimization")."""
import torch

from codebase.training.weighting.base import AdamState, Weighting
from codebase.training.weighting.registry import (
    Setting,
    non_negative,
    positive,
    register,
)


@register("famo")
class FastAdaptiveMultitask(Weighting):
    """Learnable logits xi [T], z = softmax(xi). Loss: sum_t z_t log(L_t + eps) / c with
    c = sum_t z_t / (L_t + eps) (detached), so task t's gradient has weight z_t / (c (L_t + eps))
    and the weights sum to 1; times T here (the scale of the equal-weight sum). After the optimizer
    step, ``after_step`` gets the same batch's new losses; the logits then take one Adam step (lr
    ``loss.famo_lr``, L2 decay ``loss.famo_decay``) on the gradient of
    z . (log L_before - log L_after), raising the weight of tasks that improved least. Losses must
    be non-negative. The training step runs that extra no-grad forward (``needs_losses_after``).
    """

    setting_prefix = "famo_"
    needs_losses_after = True
    settings = {"lr": Setting(0.025, float, positive, "> 0"),
                "decay": Setting(0.001, float, non_negative, ">= 0"),
                "eps": Setting(1e-8, float, positive, "> 0")}

    def __init__(self, tasks, lr=0.025, decay=0.001, eps=1e-8):
        super().__init__(tasks)
        self.eps = eps
        self.register_buffer("logits", torch.zeros(len(self.tasks)))
        self.logit_optimizer = AdamState(len(self.tasks), lr, decay)
        self._before: tuple[list[int], torch.Tensor] | None = None

    def combine(self, losses):
        indices = self.present(losses)
        shifted = self.loss_vector(losses, indices) + self.eps  # [T'], this process's losses
        # the losses of the whole batch (every process's mean): the same weights on every process
        seen = shifted.detach() if self.reduce is None else self.reduce(shifted.detach())
        z = torch.softmax(self.logits[indices], dim=0).to(shifted.device)
        weights = len(indices) * z / ((z / seen).sum() * seen)  # T z_t / (c L_t)
        self._before = (indices, seen)
        self.record(indices, weights)
        # the weighted sum: its gradient sum_t w_t grad L_t is that of T sum_t z_t log L_t / c
        return (weights * shifted).sum()

    def after_step(self, losses_after):
        if self._before is None:
            raise RuntimeError("FAMO's after_step needs a combine() of the same step before it")
        indices, before = self._before
        after = torch.stack([losses_after[self.tasks[i]].detach().float() for i in indices]) + self.eps
        if self.reduce is not None:
            after = self.reduce(after)
        improvement = (before.log() - after.log()).to(self.logits.device)  # [T']
        if not torch.isfinite(improvement).all():
            return
        with torch.enable_grad():
            logits = self.logits[indices].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.softmax(logits, dim=0), logits, grad_outputs=improvement)
        full = torch.zeros_like(self.logits)
        full[indices] = grad
        self.logit_optimizer.step(self.logits, full)
        self._before = None
