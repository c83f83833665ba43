"""What a model costs: parameters, forward FLOPs per child (a multiply-add counts 2), latency."""
import torch
from torch import nn

from codebase.evaluation.cost import count_parameters, forward_flops, median_seconds


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(8, 4), nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.second(self.first(x))


def test_parameters_and_flops_by_hand():
    model = TwoLayers()
    assert count_parameters(model) == 8 * 4 + 4 + 4 * 2
    flops = forward_flops(model, lambda: model(torch.zeros(3, 8)))
    assert flops == {"total": 2 * 3 * (8 * 4 + 4 * 2), "first": 2 * 3 * 8 * 4, "second": 2 * 3 * 4 * 2}


def test_median_seconds_runs_warmup_and_repeats():
    calls = []
    seconds = median_seconds(lambda: calls.append(1), "cpu", repeats=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0
