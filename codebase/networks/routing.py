"""Routing for the Mixture-of-Experts heads: routing weights, top-p selection, dispatch plans.

All selection is vectorised over the batch and stays on the device (no host synchronisation);
only `dispatch_plan` reads the per-expert image counts back, once for all tasks together, because
running an expert on a subset of images needs that subset's size.
"""
from dataclasses import dataclass

import torch


def routing_weights(gate_logits):
    """Gate logits [B, E] -> routing weights [B, E], non-negative, each row summing to 1."""
    return torch.softmax(gate_logits.float(), dim=-1)


def top_p_mask(weights, p):
    """Per image, the fewest experts whose weights reach ``p`` (always at least one).

    weights [B, E] (rows sum to 1) -> bool mask [B, E]. Experts are taken in descending weight;
    an expert is kept while the weight taken before it is still below ``p``.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"routing top_p must be in (0, 1], got {p}")
    sorted_weights, order = weights.sort(dim=-1, descending=True)
    mass_before = sorted_weights.cumsum(dim=-1) - sorted_weights  # [B, E]
    keep_sorted = mass_before < p
    keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def renormalise(weights, mask):
    """Zero the unselected experts and rescale each row to sum to 1: [B, E] -> [B, E]."""
    kept = weights * mask
    return kept / kept.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)


@dataclass
class Routing:
    """One task's routing decision for a batch."""

    weights: torch.Tensor  # [B, E] routing weights before selection (what the regularisers see)
    mixture: torch.Tensor  # [B, E] weights the outputs are mixed with (renormalised when sparse)
    mask: torch.Tensor     # [B, E] bool, experts that run for each image
    dense: bool = False    # every expert on every image, known without looking at the mask

    @property
    def experts_per_image(self):
        return self.mask.sum(dim=-1).float()  # [B]


def route(gate_logits, p=None):
    """Dense routing (``p`` None: every expert, softmax weights) or top-p routing."""
    weights = routing_weights(gate_logits)
    if p is None:
        return Routing(weights, weights, torch.ones_like(weights, dtype=torch.bool), dense=True)
    mask = top_p_mask(weights, p)
    return Routing(weights, renormalise(weights, mask), mask)


def dispatch_plan(routings):
    """For each task, the images each expert must run on.

    routings: {task: Routing} -> {task: [index tensor or None per expert]}; None means no image
    selected that expert, so it is not run. One host read for all sparse tasks together, none
    when every routing is dense.
    """
    plan = {}
    for name, routing in routings.items():
        if routing.dense:
            everyone = torch.arange(routing.mask.shape[0], device=routing.mask.device)
            plan[name] = [everyone] * routing.mask.shape[1]
    names = [name for name in routings if name not in plan]
    if not names:
        return plan
    masks = torch.stack([routings[name].mask for name in names])  # [T, B, E]
    counts = masks.sum(dim=1).tolist()  # [T][E], the single synchronisation
    # Stable sort puts, per expert column, the selecting images first and in batch order.
    order = torch.argsort((~masks).to(torch.uint8), dim=1, stable=True)  # [T, B, E]
    for t, name in enumerate(names):
        plan[name] = [order[t, :count, e] if count else None for e, count in enumerate(counts[t])]
    return plan
