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


def top_p_mask(weights, top_p):
    """Per image, the fewest experts whose weights reach ``top_p`` (always at least one).

    weights [B, E] (rows sum to 1) -> bool mask [B, E]. Experts are taken in descending weight;
    an expert is kept while the weight taken before it is still below ``top_p``.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"routing top_p must be in (0, 1], got {top_p}")
    sorted_weights, order = weights.sort(dim=-1, descending=True)
    mass_before = sorted_weights.cumsum(dim=-1) - sorted_weights  # [B, E]
    keep_sorted = mass_before < top_p
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
    choice: torch.Tensor | None = None  # [B] long, each image's first choice after the selection bias
    cells: int = 1         # routed items per image: 1 (image routing) or the region grid's cells; with
                           # cells > 1 every [B, E] above is [B * cells, E], cells of an image consecutive

    @property
    def experts_per_image(self):
        return self.mask.sum(dim=-1).float()  # [B] (per routed item: per cell with region routing)

    @property
    def image_weights(self):
        """[images, E] routing weights per image (with regions: the mean over the image's cells)."""
        if self.cells == 1:
            return self.weights
        return self.weights.view(-1, self.cells, self.weights.shape[-1]).mean(dim=1)

    @property
    def image_mask(self):
        """[images, E] bool: the experts that run on each image (with regions: some cell of it chose them)."""
        if self.cells == 1:
            return self.mask
        return self.mask.view(-1, self.cells, self.mask.shape[-1]).any(dim=1)


def route(gate_logits, top_p, bias=None, dense=False, cells=1):
    """Top-p routing, or with ``dense`` every expert with the softmax weights (warm-up).

    bias [E] (optional): the selection bias of auxiliary-loss-free load balancing (Wang et al.
    2024, as in DeepSeek-V3). It is added to the logits for choosing the experts only: top-p runs
    on softmax(logits + bias), while the outputs are mixed with the unbiased weights renormalised
    over the chosen experts, so the bias steers which experts run without entering any gradient.
    cells: routed items per image (region routing: gate_logits are [B * cells, E]); recorded only.
    """
    weights = routing_weights(gate_logits)
    selection = weights if bias is None else routing_weights(gate_logits.detach() + bias)
    choice = selection.detach().argmax(dim=-1)
    if dense:
        return Routing(weights, weights, torch.ones_like(weights, dtype=torch.bool), dense=True, choice=choice,
                       cells=cells)
    mask = top_p_mask(selection.detach(), top_p)
    return Routing(weights, renormalise(weights, mask), mask, choice=choice, cells=cells)


def first_choice_shares(routing, reduce=None):
    """Share of the batch's images whose first choice is each expert: [E], summing to 1.

    reduce: optional in-place sum over processes (torchrun), so every process sees the global batch.
    """
    counts = torch.zeros(routing.weights.shape[1], device=routing.weights.device)
    counts.index_add_(0, routing.choice, torch.ones_like(routing.choice, dtype=counts.dtype))
    if reduce is not None:
        reduce([counts])
    return counts / counts.sum().clamp_min(1)


@torch.no_grad()
def update_selection_bias(bias, routing, rate, reduce=None):
    """One step of loss-free balancing: raise the bias of experts chosen first by fewer than 1/E of
    the images, lower it for those chosen by more (bias += rate * sign(1/E - share)), in place."""
    shares = first_choice_shares(routing, reduce)
    bias.add_(rate * torch.sign(1.0 / shares.numel() - shares))


def dispatch_plan(routings):
    """For each task, the images each expert must run on (with region routing: the images of which
    some cell chose it, `Routing.image_mask`).

    routings: {task: Routing} -> {task: [index tensor or None per expert]}; None means no image
    selected that expert, so it is not run. One host read for all sparse tasks together, none
    when every routing is dense.
    """
    plan = {}
    for name, routing in routings.items():
        if routing.dense:
            everyone = torch.arange(routing.image_mask.shape[0], device=routing.mask.device)
            plan[name] = [everyone] * routing.mask.shape[1]
    names = [name for name in routings if name not in plan]
    if not names:
        return plan
    masks = torch.stack([routings[name].image_mask for name in names])  # [T, B, E]
    counts = masks.sum(dim=1).tolist()  # [T][E], the single synchronisation
    # Stable sort puts, per expert column, the selecting images first and in batch order.
    order = torch.argsort((~masks).to(torch.uint8), dim=1, stable=True)  # [T, B, E]
    for t, name in enumerate(names):
        plan[name] = [order[t, :count, e] if count else None for e, count in enumerate(counts[t])]
    return plan
