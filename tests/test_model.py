"""The multi-task MoE model: routing, sparse dispatch, grouped dense experts, task extensibility."""
import copy

import pytest
import torch

from codebase.config import ConfigError
from codebase.model import MultiTaskModel
from codebase.networks.experts import ExpertBank
from codebase.networks.routing import dispatch_plan, renormalise, route, top_p_mask
from codebase.training.losses import gate_balanced_assignment

SPECS = {"classification_rg": 5, "classification_mer": 3, "segmentation_ma": 1, "segmentation_od": 1}


def small_model(specs=SPECS, experts=3, **kw):
    torch.manual_seed(0)
    return MultiTaskModel(specs, "resnet18", experts, pretrained="none", **kw)


def fix_gate(model, task, logits):
    """Make a task's gate return the given [B, E] logits whatever the image."""
    model.gates[task].forward = lambda pooled: logits.to(pooled.dtype)


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    return calls


def count_expert_calls(model):
    """{(task, expert index): forward calls so far} for every expert module of the model."""
    calls = {}
    for task, bank in model.experts.items():
        for index, expert in enumerate(bank.experts):
            calls[task, index] = 0

            def hook(mod, args, out, key=(task, index)):
                calls[key] += 1
            expert.register_forward_hook(hook)
    return calls


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


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("training", [False, True])
def test_grouped_dense_experts_equal_the_sequential_form(training, memory_format):
    model = small_model().train(training).to(memory_format=memory_format)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    sequential_model = copy.deepcopy(model)
    for bank, other in zip(model.experts.values(), sequential_model.experts.values()):
        assert bank.groupable
        bank.grouped, other.grouped = True, False
    calls = count_expert_calls(model)
    images = torch.randn(2, 3, 64, 96).contiguous(memory_format=memory_format)
    grouped = model(images, dense=True)["logits"]
    assert sum(calls.values()) == 0  # the grouped form never calls an expert module
    sequential = sequential_model(images, dense=True)["logits"]
    for task in SPECS:
        assert torch.allclose(grouped[task], sequential[task], atol=1e-5), task
    # BatchNorm running statistics land in each expert's own buffers, as in the sequential form.
    for (name, buffer), other in zip(model.named_buffers(), sequential_model.buffers()):
        assert torch.allclose(buffer.float(), other.float(), atol=1e-6), name


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


def test_dense_form_is_grouped_on_cuda_and_sequential_on_cpu_by_default():
    """"auto" runs the grouped computation where it is the fast form (CUDA) and expert after expert on the CPU,
    where oneDNN's grouped kernels are slower (benchmarks/bench_routing.py)."""
    model = small_model()
    for bank in model.experts.values():
        assert bank.grouped == "auto"
        assert bank.runs_grouped(torch.device("cuda")) and not bank.runs_grouped(torch.device("cpu"))
        bank.grouped = True
        assert bank.runs_grouped(torch.device("cpu"))
    model = small_model()
    calls = count_expert_calls(model)
    model(torch.randn(2, 3, 64, 96), dense=True)
    assert set(calls.values()) == {1}  # on the CPU every expert module runs once, on the whole batch
    with pytest.raises(ValueError, match="grouped"):
        ExpertBank([], grouped="yes")


def test_mix_with_an_expert_on_the_whole_batch_and_one_on_a_subset():
    """An expert every image selected runs on the batch as it is; one selected by some images runs on exactly
    those; one selected by none never runs. The sum is each image's own weighted mixture."""
    torch.manual_seed(0)
    experts = [torch.nn.Conv2d(4, 2, 1) for _ in range(3)]
    bank = ExpertBank(experts)
    calls = [count_calls(expert) for expert in experts]
    x = torch.randn(3, 4, 5, 6)
    mixture = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [1.0, 0.0, 0.0]])
    plan = [torch.arange(3), torch.tensor([1]), None]
    out = bank.mix((x,), mixture, plan)
    assert calls == [[3], [1], []]
    expected = torch.stack([experts[0](x[i:i + 1])[0] * mixture[i, 0] + experts[1](x[i:i + 1])[0] * mixture[i, 1]
                            for i in range(3)])
    assert torch.allclose(out, expected, atol=1e-6)
