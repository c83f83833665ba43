"""Routing statistics of an evaluation, counted exactly over its batches."""
import math

import pytest
import torch

from codebase.evaluation.evaluate import RoutingMeter
from codebase.networks.routing import Routing


def routing_of(mask):
    mask = torch.tensor(mask, dtype=torch.bool)
    weights = mask.float() / mask.sum(dim=1, keepdim=True)
    return Routing(weights, weights, mask)


def test_usage_experts_per_image_and_entropy_over_two_batches():
    meter = RoutingMeter()
    meter.update({"t": routing_of([[1, 0, 0], [1, 1, 0]])})
    meter.update({"t": routing_of([[0, 0, 1], [1, 0, 0]])})
    stats = meter.compute()["t"]
    assert stats["usage"] == [0.75, 0.25, 0.25]  # images that ran each expert, of 4
    assert stats["experts_per_image"] == pytest.approx(5 / 4) and stats["busiest_share"] == 0.75
    shares = [3 / 5, 1 / 5, 1 / 5]  # of the 5 dispatches
    assert stats["usage_entropy"] == pytest.approx(-sum(s * math.log(s) for s in shares) / math.log(3))


def test_one_expert_taking_every_image_has_zero_entropy_and_one_expert_is_balanced():
    meter = RoutingMeter()
    meter.update({"collapsed": routing_of([[0, 1], [0, 1]]), "single": routing_of([[1], [1]])})
    stats = meter.compute()
    assert stats["collapsed"]["usage"] == [0.0, 1.0] and stats["collapsed"]["usage_entropy"] == 0.0
    assert stats["single"]["usage_entropy"] == 1.0
