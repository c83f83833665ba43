"""AdamW groups (heads, backbone at its own rate, a weighting's undecayed weights) and the schedules."""
import pytest
import torch
from torch import nn

from codebase.training.optim import make_optimizer, make_scheduler


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = nn.Linear(2, 2), nn.Linear(2, 1)


def test_groups_rates_and_decay():
    model, learned = Tiny(), nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer([model], 1e-3, 1e-4, 0.05, "cpu", undecayed=[learned])
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert isinstance(optimizer, torch.optim.AdamW)
    assert groups["heads"]["lr"] == 1e-3 and groups["backbone"]["lr"] == 1e-4
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in model.backbone.parameters()}
    assert groups["loss weighting"]["weight_decay"] == 0.0 and groups["heads"]["weight_decay"] == 0.05
    frozen = Tiny()
    frozen.head.requires_grad_(False)
    assert "heads" not in {g["name"] for g in make_optimizer([frozen], 1e-3, 1e-4, 0.0, "cpu").param_groups
                           if g["params"]}


def test_step_and_cosine_schedules():
    def rates(kind, epochs=4, **kwargs):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = make_scheduler(optimizer, kind, epochs, **kwargs)
        seen = []
        for _ in range(epochs):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    assert rates("step", step_size=2, gamma=0.5) == [1.0, 1.0, 0.5, 0.5]
    assert rates("cosine") == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])
    with pytest.raises(ValueError, match="schedule.kind must be one of"):
        rates("linear")
