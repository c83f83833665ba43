"""AdamW groups (heads, backbone at its own rate, a weighting's undecayed weights) and the schedules."""
import pytest
import torch
from torch import nn

from codebase.training.optim import make_optimizer, make_scheduler, restore_training_state


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


def trained_state(lr=1e-3, backbone_lr=1e-4, weight_decay=0.05, kind="step", epochs=6, step_size=2, gamma=0.5,
                  steps=3):
    """(model, optimizer, scheduler) after `steps` epochs of one step each, as a checkpoint holds them."""
    torch.manual_seed(0)
    model = Tiny()
    optimizer = make_optimizer([model], lr, backbone_lr, weight_decay, "cpu")
    scheduler = make_scheduler(optimizer, kind, epochs, step_size, gamma)
    for _ in range(steps):
        model.head(model.backbone(torch.ones(1, 2))).sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


@pytest.mark.parametrize("settings, expected_rates, expected_decay", [
    ({}, [5e-4, 5e-5], 0.05),                                                        # unchanged: as saved
    ({"lr": 1e-2, "weight_decay": 0.1}, [5e-3, 5e-5], 0.1),                           # optim.lr, weight_decay
    ({"gamma": 0.1}, [1e-4, 1e-5], 0.05),                                            # schedule.gamma
    ({"kind": "cosine", "epochs": 6}, [5e-4, 5e-5], 0.05),                            # schedule.kind: cos(pi/2)
    ({"step_size": 4, "backbone_lr": 1e-3}, [1e-3, 1e-3], 0.05),                      # schedule.step_size
])
def test_restored_optimizer_takes_the_settings_of_today(settings, expected_rates, expected_decay):
    _, saved_optimizer, saved_scheduler = trained_state()
    fresh_model, optimizer, scheduler = trained_state(**settings, steps=0)
    applied = restore_training_state(optimizer, scheduler, saved_optimizer.state_dict(), saved_scheduler.state_dict())
    assert applied == bool(settings)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(expected_rates)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [expected_decay] * 2
    assert scheduler.last_epoch == 3 and scheduler.get_last_lr() == pytest.approx(expected_rates)
    moments = optimizer.state[fresh_model.head.weight]["exp_avg"]  # the checkpoint's moments are kept
    assert torch.equal(moments, saved_optimizer.state[saved_optimizer.param_groups[0]["params"][0]]["exp_avg"])
    scheduler.step()  # and the schedule goes on from there with today's settings (epoch 4)
    if settings.get("gamma") == 0.1:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_without_a_schedule_the_restored_optimizer_takes_todays_rate():
    _, saved, _ = trained_state()
    model = Tiny()
    optimizer = make_optimizer([model], 0.02, 1e-4, 0.05, "cpu")
    assert restore_training_state(optimizer, None, saved.state_dict(), None)
    assert [group["lr"] for group in optimizer.param_groups] == [0.02, 1e-4]
