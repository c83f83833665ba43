"""Routing: top-p selection, renormalised weights, dispatch plans."""

import pytest
import torch

from codebase.networks.routing import dispatch_plan, renormalise, route, top_p_mask


def reference_top_p(weights, p):
    """Per-image loop: the obviously-correct definition."""
    mask = torch.zeros_like(weights, dtype=torch.bool)
    for i, row in enumerate(weights):
        total = 0.0
        for e in torch.argsort(row, descending=True).tolist():
            mask[i, e] = True
            total += row[e].item()
            if total >= p:
                break
    return mask


@pytest.mark.parametrize("p", [0.3, 0.5, 0.8, 0.95, 1.0])
def test_top_p_mask_matches_the_per_image_definition(p):
    weights = torch.softmax(torch.randn(64, 5) * 2, dim=-1)
    assert torch.equal(top_p_mask(weights, p), reference_top_p(weights, p))


def test_top_p_takes_at_least_one_expert_and_renormalises():
    weights = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]])
    mask = top_p_mask(weights, 0.5)
    assert mask.tolist() == [[True, False, False], [True, True, False]]
    mixed = renormalise(weights, mask)
    assert torch.allclose(mixed.sum(-1), torch.ones(2))
    assert torch.allclose(mixed[1, :2], torch.tensor([0.4, 0.35]) / 0.75)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5])
def test_top_p_outside_unit_interval_is_refused(p):
    with pytest.raises(ValueError, match="top_p"):
        top_p_mask(torch.full((1, 3), 1 / 3), p)


def test_dispatch_plan_lists_the_selecting_images_per_expert():
    logits = torch.tensor([[4.0, 0.0, -4.0], [-4.0, 4.0, 0.0], [4.0, 3.9, -9.0]])
    plan = dispatch_plan({"t": route(logits, top_p=0.6)})["t"]
    assert plan[0].tolist() == [0, 2]
    assert plan[1].tolist() == [1, 2]
    assert plan[2] is None
