"""The multi-task MoE model: routing, sparse dispatch, grouped dense experts, task extensibility."""

import pytest
import torch
from tiny_models import SPECS, count_calls, small_model

from codebase.config import ConfigError
from codebase.model import MultiTaskModel
from codebase.networks.routing import route
from codebase.training.losses import gate_balanced_assignment


def fix_gate(model, task, logits):
    """Make a task's gate return the given [B, E] logits whatever the image."""
    model.gates[task].forward = lambda pooled: logits.to(pooled.dtype)


def test_task_names_need_a_known_kind():
    with pytest.raises(ConfigError, match="model.task_specs.grading"):
        MultiTaskModel({"grading": 5}, "resnet18")
    with pytest.raises(ValueError, match="num_experts"):
        MultiTaskModel(SPECS, "resnet18", 0)


def test_unselected_expert_never_runs_and_output_equals_dense_over_selected():
    model = small_model().eval()
    images = torch.randn(3, 3, 64, 96)
    for task in SPECS:  # expert 0 takes ~0.9, expert 1 the rest; expert 2 ~0
        fix_gate(model, task, torch.tensor([[2.5, 0.3, -12.0]]).expand(3, -1))
    calls = {task: [count_calls(expert) for expert in model.experts[task]] for task in SPECS}
    with torch.no_grad():
        sparse = model(images, dense=False)
    for task in SPECS:
        assert calls[task][2] == [], f"{task}: expert 2 ran although no image selected it"
        assert calls[task][0] == [3] and calls[task][1] == []  # 0.9 >= p: one expert per image
    # The same output by hand: expert 0 alone with weight 1.
    model.top_p = 0.95  # now experts 0 and 1 run, renormalised
    with torch.no_grad():
        two = model(images, dense=False)
        low, high = model.backbone(images)
        context = torch.nn.functional.interpolate(model.aspp(high), size=low.shape[-2:], mode="bilinear")
        w = torch.softmax(torch.tensor([2.5, 0.3, -12.0]), 0)
        w01 = w[:2] / w[:2].sum()
        rg = model.experts["classification_rg"]
        expected_rg = w01[0] * rg[0](high) + w01[1] * rg[1](high)
        od = model.experts["segmentation_od"]
        od_low = w01[0] * od[0](context, low) + w01[1] * od[1](context, low)
        expected_od = torch.nn.functional.interpolate(od_low, size=(64, 96), mode="bilinear")
    assert torch.allclose(two["logits"]["classification_rg"], expected_rg, atol=1e-5)
    assert torch.allclose(two["logits"]["segmentation_od"], expected_od, atol=1e-5)
    assert torch.allclose(sparse["logits"]["classification_rg"], rg[0](high), atol=1e-5)


def test_each_image_gets_exactly_its_own_mixture():
    model = small_model(top_p=0.7).eval()
    images = torch.randn(4, 3, 64, 96)
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [2.0, 2.0, -5.0]])
    fix_gate(model, "classification_rg", logits)
    with torch.no_grad():
        out = model.forward_grading(images)["logits"]["classification_rg"]
        high = model.backbone(images)[1]
        bank = model.experts["classification_rg"]
        each = torch.stack([bank[e](high) for e in range(3)], dim=1)  # [B, E, 5]
    routing = route(logits, 0.7)
    assert routing.mask.sum(1).tolist() == [1, 1, 1, 2]
    expected = (each * routing.mixture.unsqueeze(-1)).sum(1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_gradients_reach_gates_backbone_and_selected_experts_only():
    model = small_model().train()
    for task in SPECS:
        fix_gate(model, task, torch.tensor([[3.0, 0.0, -12.0]]).expand(2, -1))
    out = model(torch.randn(2, 3, 64, 96), dense=False)
    sum(v.float().mean() for v in out["logits"].values()).backward()
    assert model.backbone.parameters().__next__().grad is not None
    assert all(p.grad is not None for p in model.experts["segmentation_od"][0].parameters())
    assert all(p.grad is None for p in model.experts["segmentation_od"][2].parameters())


@pytest.mark.parametrize("detach", [True, False])
def test_gate_losses_reach_the_backbone_only_when_the_gate_input_is_attached(detach):
    model = small_model(gate_detach=detach).train()
    out = model(torch.randn(4, 3, 64, 96), side="grading", dense=True)
    sum(gate_balanced_assignment(r.weights) for r in out["routing"].values()).backward()
    backbone_grads = [p.grad for p in model.backbone.parameters()]
    assert all(p.grad is not None for p in model.gates["classification_rg"].parameters())  # the gate still learns
    if detach:
        assert all(g is None for g in backbone_grads)
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in backbone_grads)


def test_selection_bias_steers_which_experts_run():
    model = small_model().eval()
    for task in SPECS:
        fix_gate(model, task, torch.tensor([[3.0, 0.0, -12.0]]).expand(2, -1))
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain = model(images, dense=False)
        model.gates["classification_rg"].selection_bias.copy_(torch.tensor([-6.0, 0.0, 0.0]))
        biased = model(images, dense=False)
    assert plain["routing"]["classification_rg"].mask.tolist() == [[True, False, False]] * 2
    assert biased["routing"]["classification_rg"].mask.tolist() == [[False, True, False]] * 2
    torch.testing.assert_close(biased["logits"]["classification_mer"], plain["logits"]["classification_mer"])
    routing = biased["routing"]["classification_rg"]
    model.update_selection_biases({"classification_rg": routing}, 0.5)
    # both images chose expert 1: its bias goes down, the others' up
    assert model.gates["classification_rg"].selection_bias.tolist() == [-5.5, -0.5, 0.5]


def test_a_new_task_is_one_entry_in_task_specs():
    specs = dict(SPECS, segmentation_red=1, classification_referable=2)
    model = small_model(specs, experts=2).eval()
    out = model(torch.randn(2, 3, 64, 96))
    assert out["logits"]["segmentation_red"].shape == (2, 1, 64, 96)
    assert out["logits"]["classification_referable"].shape == (2, 2)
    assert set(out["routing"]) == set(specs)
    only_grading = model.forward_grading(torch.randn(2, 3, 64, 96))
    assert set(only_grading["logits"]) == {"classification_rg", "classification_mer", "classification_referable"}


