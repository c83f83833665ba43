"""Losses: classification focal / cross-entropy, lesion focal + soft Dice, gate regularisers.
(How the task losses are combined is codebase/training/weighting.py's business.)

Every loss is computed in float32, whatever the dtype of its inputs (bf16/fp16 under autocast).
"""
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from codebase.data.idrid import LESIONS

CLASSIFICATION_LOSSES = ("focal", "ce")


def _float32(device):
    """Context that switches autocast off, so a loss stays in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


def _class_weight_tensor(class_weights):
    return None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Multi-class focal loss on softmax: mean over samples of -w_y (1 - p_y)^gamma log p_y.

    With class weights the mean is normalised by the sum of the targets' weights, as
    ``F.cross_entropy`` does, so ``gamma=0`` is exactly (weighted) cross-entropy.
    """

    def __init__(self, gamma=2.0, class_weights=None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("class_weights", _class_weight_tensor(class_weights))

    def forward(self, logits, targets):
        """logits [B, C], targets [B] int64 -> scalar."""
        with _float32(logits.device):
            log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)  # [B]
            loss = -(-torch.expm1(log_p)).pow(self.gamma) * log_p  # (1 - p)^gamma, accurate near p = 1
            if self.class_weights is None:
                return loss.mean()
            weights = self.class_weights[targets]  # [B]
            return (weights * loss).sum() / weights.sum()


def classification_loss(kind="focal", gamma=2.0, class_weights=None):
    """The classification criterion named ``kind``: "focal" (FocalLoss) or "ce" (cross-entropy)."""
    if kind == "focal":
        return FocalLoss(gamma, class_weights)
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=_class_weight_tensor(class_weights))
    raise ValueError(f"classification loss {kind!r} is not one of {', '.join(CLASSIFICATION_LOSSES)}")


class SegmentationLoss(nn.Module):
    """Per-lesion sigmoid focal loss plus soft Dice, each summed over lesions with ``lesion_weights``.

    total = focal_weight * sum_l w_l focal_l + dice_weight * sum_l w_l dice_l, where
    - focal_l is torchvision's sigmoid focal loss (``alpha``, ``gamma``) averaged over the
      batch's pixels of lesion l;
    - dice_l = 1 - (2 sum p m + smooth) / (sum p + sum m + smooth), with the sums taken over the
      whole batch (batch-level Dice: tiny lesions in a single image do not dominate, and an image
      without the lesion adds only its false positives). ``smooth`` (1 pixel) keeps a lesion absent
      from the batch finite: its Dice loss is sum p / (sum p + 1), which is 0 when nothing is predicted.
      With ``dice_on_absent=False`` a lesion with no pixel in the batch adds no Dice loss: its false
      positives are left to the focal term. That term drives the probabilities of a lesion the batch
      lacks towards 0 over every pixel (the logits drift far negative), which is what most batches
      of patch training teach about a rare small lesion, so patch training may want it off.
    ``lesion_weights``: None (all 1), a sequence in ``lesions`` order, or a {lesion: weight} mapping
    (unlisted lesions weigh 1).
    """

    def __init__(self, alpha=0.75, gamma=4.0, focal_weight=1.0, dice_weight=1.0, lesion_weights=None,
                 lesions=LESIONS, smooth=1.0, dice_on_absent=True):
        super().__init__()
        self.lesions = tuple(lesions)
        self.alpha, self.gamma, self.smooth = alpha, gamma, smooth
        self.dice_on_absent = bool(dice_on_absent)
        self.focal_weight, self.dice_weight = focal_weight, dice_weight
        if isinstance(lesion_weights, Mapping):
            unknown = set(lesion_weights) - set(self.lesions)
            if unknown:
                raise ValueError(f"lesion_weights has unknown lesions {sorted(unknown)}; expected some of {self.lesions}")
            lesion_weights = [lesion_weights.get(lesion, 1.0) for lesion in self.lesions]
        elif lesion_weights is None:
            lesion_weights = [1.0] * len(self.lesions)
        elif len(lesion_weights) != len(self.lesions):
            raise ValueError(f"lesion_weights has {len(lesion_weights)} values; expected one per lesion {self.lesions}")
        self.register_buffer("lesion_weights", torch.tensor(lesion_weights, dtype=torch.float32))

    def forward(self, logits, masks):
        """logits [B, L, H, W], masks [B, L, H, W] (0/1, any dtype) -> (total, components).

        components: detached scalars "focal" and "dice" (lesion-weighted sums, before
        focal_weight / dice_weight) and per lesion "focal_<LESION>", "dice_<LESION>".
        """
        if logits.shape != masks.shape or logits.shape[1] != len(self.lesions):
            raise ValueError(f"segmentation logits {tuple(logits.shape)} and masks {tuple(masks.shape)} must both be "
                             f"[B, {len(self.lesions)}, H, W] for lesions {self.lesions}")
        with _float32(logits.device):
            logits, targets = logits.float(), masks.float()
            focal = sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, reduction="none")
            focal = focal.mean(dim=(0, 2, 3))  # [L]
            probs = torch.sigmoid(logits)
            overlap = (probs * targets).sum(dim=(0, 2, 3))  # [L]
            target_pixels = targets.sum(dim=(0, 2, 3))  # [L]
            dice = 1 - (2 * overlap + self.smooth) / (probs.sum(dim=(0, 2, 3)) + target_pixels + self.smooth)  # [L]
            if not self.dice_on_absent:
                dice = torch.where(target_pixels > 0, dice, torch.zeros_like(dice))
            focal_sum = (self.lesion_weights * focal).sum()
            dice_sum = (self.lesion_weights * dice).sum()
            total = self.focal_weight * focal_sum + self.dice_weight * dice_sum
        components = {"focal": focal_sum.detach(), "dice": dice_sum.detach()}
        for index, lesion in enumerate(self.lesions):
            components[f"focal_{lesion}"] = focal[index].detach()
            components[f"dice_{lesion}"] = dice[index].detach()
        return total, components


def gate_sparsity(weights):
    """Normalised Gini impurity of the routing weights [B, E] (rows sum to 1), batch mean.

    (1 - sum_e w_e^2) * E / (E - 1): 1 when an image spreads evenly over all experts, 0 when it
    uses one; lower means peakier routing. 0 for a single expert.
    """
    weights = weights.float()
    num_experts = weights.shape[1]
    if num_experts == 1:
        return weights.new_zeros(())
    impurity = 1 - weights.pow(2).sum(dim=1)  # [B]
    return impurity.mean() * num_experts / (num_experts - 1)


def gate_load_balance(weights):
    """Squared coefficient of variation of the experts' mean usage, from routing weights [B, E].

    With P_e the batch mean of w_e (sum_e P_e = 1): E * sum_e P_e^2 - 1, which is 0 when every
    expert gets the same share and E - 1 when one expert gets everything.
    """
    usage = weights.float().mean(dim=0)  # [E]
    return usage.numel() * usage.pow(2).sum() - 1


def gate_switch_balance(weights, dispatch=None):
    """Switch-Transformer load balancing on the dispatch: E * sum_e f_e * P_e.

    weights [B, E] routing weights (rows sum to 1); dispatch [B, E] bool, the experts each image
    ran (top-p mask), or None for each image's top-1 expert (dense routing runs every expert, so
    its mask says nothing about the choice). f_e is expert e's share of the dispatches (sums to 1,
    no gradient: a count), P_e the batch mean of w_e (differentiable). 1 when the dispatches or the
    weights are uniform, E when one expert takes every image with weight 1; the gradient lowers the
    weight of the experts that take the most images.
    """
    weights = weights.float()
    if dispatch is None:
        dispatch = F.one_hot(weights.argmax(dim=1), weights.shape[1])
    dispatch = dispatch.detach().float()  # [B, E]
    shares = dispatch.sum(dim=0) / dispatch.sum()  # f [E]
    return weights.shape[1] * (shares * weights.mean(dim=0)).sum()


def gate_entropy(weights):
    """Mean over images of the routing entropy -sum_e w_e log w_e of weights [B, E], in nats.

    0 when an image uses one expert, log E when uniform. Zero weights contribute 0 (and a finite gradient).
    """
    weights = weights.float()
    log_weights = weights.clamp_min(torch.finfo(torch.float32).tiny).log()
    return -(weights * log_weights).sum(dim=1).mean()


def balanced_assignment(weights, temperature=0.05, iterations=5):
    """The balanced assignment of a batch's images to experts nearest the router's preferences.

    weights [B, E] routing weights (rows sum to 1) -> Q [B, E], no gradient: rows sum to 1 and
    every expert's column sums to B / E. Sinkhorn-Knopp scaling of exp(log w / temperature), as in
    the balanced routing of BASE layers (Lewis et al. 2021) and the equipartition of SwAV (Caron et
    al. 2020): a low temperature makes each row nearly one-hot, so every expert gets an equal share
    of the images and each image goes to the expert it prefers most relative to the others.
    """
    with torch.no_grad():
        batch, num_experts = weights.shape
        log_q = weights.float().clamp_min(torch.finfo(torch.float32).tiny).log() / temperature
        column_mass = torch.full((), batch / num_experts, device=weights.device).log()  # a fill: no host copy
        for _ in range(iterations):
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + column_mass
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
        return log_q.exp()


def gate_balanced_assignment(weights):
    """Cross-entropy of the routing weights [B, E] against the batch's balanced choice of one expert
    per image (each image's largest entry of `balanced_assignment`), batch mean, in nats.

    Its gradient moves each image's weight onto one expert, different images onto different experts
    in about equal shares: the choices are balanced and sharp, so top-p still runs about one expert
    per image (a loss on the mean weights alone would spread every image over all experts instead).
    The target is a choice, not a weight, so it carries no gradient. 0 for a single expert.
    """
    weights = weights.float()
    if weights.shape[1] == 1:
        return weights.new_zeros(())
    choice = balanced_assignment(weights).argmax(dim=1)  # [B]
    log_w = weights.clamp_min(torch.finfo(torch.float32).tiny).log()
    return -log_w.gather(1, choice[:, None]).mean()

