"""Tasks: task_specs entries parsed once; a new kind of task is one registry entry."""
import pytest
import torch
from torch import nn

from codebase.config import ConfigError
from codebase.engine import MultiTaskLoss
from codebase.evaluation.evaluate import evaluate_grading
from codebase.model import MultiTaskModel
from codebase.tasks import (
    TASK_KINDS,
    Target,
    TaskKind,
    on_side,
    parse_tasks,
    register_task_kind,
)


def test_parse_knows_kind_side_target_outputs_and_metric_key():
    rg, referable, red = parse_tasks({"classification_rg": 5, "classification_referable": 2, "segmentation_red": 1})
    assert (rg.side, rg.target, rg.outputs, rg.key) == ("grading", "rg", 5, "rg")
    assert (red.side, red.key) == ("segmentation", "RED")
    batch = {"rg": torch.tensor([0, 1, 2, 4]), "mer": torch.tensor([0, 0, 1, 2])}
    assert referable.target_of(batch).tolist() == [0, 0, 1, 1]
    masks = torch.zeros(1, 5, 2, 2, dtype=torch.uint8)
    masks[0, 0, 0, 0] = 1  # MA
    masks[0, 1, 1, 1] = 1  # HE
    masks[0, 2, 0, 1] = 1  # EX: not a red lesion
    assert red.target_of({"masks": masks})[0, 0].tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("specs, expected", [
    ({"grading": 5}, "model.task_specs.grading: a task is named <kind>_<target>"),
    ({"segmentation_vessels": 1}, "no segmentation target named 'vessels'"),
    ({"classification_rg": 4}, "the rg target needs 5 output"),
    ({"classification_rg": 5.0}, "expected a whole number of outputs"),
    ({"segmentation_ma": 0}, "expected a whole number of outputs >= 1"),
    ({}, "expected a non-empty dict"),
])
def test_wrong_entries_are_config_errors_naming_the_task(specs, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_tasks(specs)


class MeanAbsoluteError:
    def __init__(self):
        self.sums = torch.zeros(2)

    def update(self, outputs, targets):
        self.sums += torch.stack([(outputs[:, 0] - targets).abs().sum(), torch.tensor(float(len(targets)))])

    def state_tensors(self):
        return [self.sums]

    def compute(self):
        return {"mae": float(self.sums[0] / self.sums[1])}


class SquaredError(nn.Module):
    def forward(self, outputs, target):
        return ((outputs[:, 0].float() - target) ** 2).mean(), {}


@pytest.fixture
def regression_kind(monkeypatch):
    """A new kind of task, added by one registry entry: the grade as a number, learned by squared error."""
    monkeypatch.setattr("codebase.tasks.TASK_KINDS", dict(TASK_KINDS))
    return register_task_kind(TaskKind(
        name="regression", side="grading",
        targets={"rg": Target(lambda batch: batch["rg"].float(), 1)},
        make_loss=lambda task, config: SquaredError(), make_meter=lambda task: MeanAbsoluteError()))


def test_a_new_task_kind_is_one_registry_entry(regression_kind):
    specs = {"classification_rg": 5, "regression_rg": 1, "segmentation_od": 1}
    model = MultiTaskModel(specs, "resnet18", num_experts=2, aspp_channels=16, decoder_channels=8, head_hidden=8)
    images, grades = torch.randn(4, 3, 64, 96), {"rg": torch.tensor([0, 1, 3, 4]), "mer": torch.zeros(4, dtype=torch.long)}
    out = model(images, side="grading", dense=True)
    assert out["logits"]["regression_rg"].shape == (4, 1)

    tasks = on_side(model.tasks, "grading")
    criterion = MultiTaskLoss(model.tasks)
    targets = {task.name: task.target_of(grades) for task in tasks}
    task_losses, _, components = criterion(out["logits"], targets, out["routing"])
    expected = ((out["logits"]["regression_rg"][:, 0] - grades["rg"].float()) ** 2).mean()
    assert components["loss_regression_rg"] == pytest.approx(float(expected.detach()))
    sum(task_losses.values()).backward()
    assert all(p.grad is not None for p in model.experts["regression_rg"].parameters())

    loader = [{"image": images, **grades}]
    model.eval()
    metrics = evaluate_grading(lambda x: model(x, side="grading"), loader, tasks, torch.device("cpu"))
    predicted = model(images, side="grading")["logits"]["regression_rg"][:, 0]
    assert metrics["rg_mae"] == pytest.approx(float((predicted - grades["rg"].float()).abs().mean()), rel=1e-5)


def test_loss_config_reaches_every_lesion_task_criterion():
    tasks = parse_tasks({"classification_rg": 5, "segmentation_ma": 1, "segmentation_he": 1})
    assert all(loss.dice_on_absent for name, loss in MultiTaskLoss(tasks, {}).losses.items() if name != "classification_rg")
    criteria = MultiTaskLoss(tasks, {"dice_on_absent": False, "segmentation_gamma": 2.0}).losses
    assert [(criteria[name].dice_on_absent, criteria[name].gamma) for name in ("segmentation_ma", "segmentation_he")] \
        == [(False, 2.0), (False, 2.0)]
