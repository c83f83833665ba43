"""Region routing (experts per grid cell), what the gates read (high / low / both), the cosine router."""
import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_models import count_calls, small_model

import train_mlt_model
from codebase.config import FIXES_THE_RUN, ConfigError, resume_changes, resume_rule, with_defaults
from codebase.engine import GATE_REGULARISERS
from codebase.evaluation.cost import forward_flops, predicted_top_p_flops
from codebase.evaluation.evaluate import RoutingMeter
from codebase.model import build_model
from codebase.networks.layers import Gate
from codebase.training.losses import gate_load_balance

SEG = {"segmentation_ma": 1, "segmentation_od": 1}
GRID = (2, 3)  # 64 x 96 images: stride-4 maps 16 x 24, cells of 8 x 8 pixels
CELLS = GRID[0] * GRID[1]


def region_model(**kw):
    return small_model(SEG, granularity="region", region_grid=GRID, **kw)


def cell_logits(choices, experts=3):
    """[B * cells, E] logits that make each cell pick its expert in ``choices`` [B][cells] alone."""
    logits = torch.full((len(choices) * CELLS, experts), -10.0)
    for item, expert in enumerate(e for image in choices for e in image):
        logits[item, expert] = 10.0
    return logits


def fix_gate(model, task, logits):
    model.gates[task].forward = lambda features: logits.to(features.dtype)


def expert_inputs(model, images):
    low, high = model.backbone(images)
    context = F.interpolate(model.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
    return context, low


def test_each_cell_gets_its_own_expert_and_an_unselected_expert_does_not_run():
    model = region_model(top_p=0.5).eval()
    images = torch.randn(2, 3, 64, 96)
    # image 0: cell 4 (row 1, column 1) picks expert 1, the others expert 0; image 1: expert 0 everywhere
    choices = [[0, 0, 0, 0, 1, 0], [0] * CELLS]
    for task in SEG:
        fix_gate(model, task, cell_logits(choices))
    calls = [count_calls(expert) for expert in model.experts["segmentation_od"]]
    with torch.no_grad():
        out = model(images)["logits"]["segmentation_od"]
        ran = copy.deepcopy(calls)
        context, low = expert_inputs(model, images)
        od = model.experts["segmentation_od"]
        expected = od[0](context, low)  # [2, 1, 16, 24]
        expected[0, :, 8:16, 8:16] = od[1](context[:1], low[:1])[0, :, 8:16, 8:16]
        expected = F.interpolate(expected, size=(64, 96), mode="bilinear", align_corners=False)
    assert ran == [[2], [1], []]  # expert 1 on image 0 only, expert 2 on no image
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # the per-pixel weights really differ per region: expert 1's output is not expert 0's there
    assert not torch.allclose(od[1](context[:1], low[:1]), od[0](context[:1], low[:1]), atol=1e-3)


def test_flops_counted_equal_the_prediction_and_top_p_saves_compute():
    model = region_model(top_p=0.5).eval()
    images = torch.randn(2, 3, 64, 96)
    # image 0: experts 0 and 1 (two cells), image 1: expert 2 only -> 3 of the 6 expert x image pairs run
    for task in SEG:
        fix_gate(model, task, cell_logits([[0, 0, 0, 1, 1, 0], [2] * CELLS]))
    counted = forward_flops(model, lambda: model(images))["total"]
    dense = forward_flops(model, lambda: model(images, dense=True))["total"]
    predicted, routings = predicted_top_p_flops(model, images)
    assert routings["segmentation_od"].image_mask.tolist() == [[True, True, False], [False, False, True]]
    assert abs(counted - predicted) <= 0.01 * predicted, (counted, predicted)
    assert counted < 0.8 * dense  # half the expert work is skipped


def test_balancing_losses_and_usage_records_treat_cells_as_the_routed_items():
    model = region_model(top_p=0.5).train()
    images = torch.randn(2, 3, 64, 96)
    choices = [[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 2]]  # 10 of 12 cells choose expert 0
    for task in SEG:
        fix_gate(model, task, cell_logits(choices))
    routings = model(images)["routing"]
    routing = routings["segmentation_od"]
    assert routing.weights.shape == (2 * CELLS, 3) and routing.cells == CELLS
    model.update_selection_biases(routings, rate=0.1)
    assert model.gates["segmentation_od"].selection_bias.tolist() == pytest.approx([-0.1, 0.1, 0.1])
    assert GATE_REGULARISERS["load_balance"](routing) == pytest.approx(gate_load_balance(routing.weights).item())
    assert GATE_REGULARISERS["load_balance"](routing).item() > 1.0  # cells, not images: skewed towards expert 0
    meter = RoutingMeter()
    meter.update(routings)
    stats = meter.compute()["segmentation_od"]
    assert stats["usage"] == pytest.approx([10 / 12, 1 / 12, 1 / 12])


def test_gradient_reaches_the_region_gate():
    model = region_model(top_p=0.8).train()
    out = model(torch.randn(2, 3, 64, 96))
    out["logits"]["segmentation_od"].square().mean().backward()
    for parameter in model.gates["segmentation_od"].net.parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_grading_tasks_keep_image_routing():
    model = small_model({"classification_rg": 5, "segmentation_od": 1}, granularity="region", region_grid=GRID)
    routings = model(torch.randn(2, 3, 64, 96))["routing"]
    assert routings["classification_rg"].weights.shape == (2, 3) and routings["classification_rg"].cells == 1
    assert routings["segmentation_od"].weights.shape == (2 * CELLS, 3)


@pytest.mark.parametrize("gate_input, width", [("high", 512), ("low", 64), ("both", 576)])
def test_the_gate_input_width_follows_gate_input(gate_input, width):
    model = small_model(SEG, gate_input=gate_input)
    assert model.gates["segmentation_od"].net[0].in_features == width
    assert model(torch.randn(2, 3, 64, 96))["routing"]["segmentation_od"].weights.shape == (2, 3)


def test_a_colour_cast_changes_the_low_gates_logits():
    model = small_model(SEG, gate_input="low").eval()
    seen = []
    model.gates["segmentation_od"].register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    images = torch.rand(2, 3, 64, 96)
    cast = images.clone()
    cast[:, 0] += 0.5  # a red cast
    with torch.no_grad():
        model(images), model(cast)
        low, _ = model.backbone(images)
    torch.testing.assert_close(seen[0][0], low.mean(dim=(2, 3)))  # the gate reads the pooled low-level features
    assert (seen[0][1] - seen[1][1]).abs().max() > 1e-4


def test_cosine_router_logits_are_bounded_by_the_clamped_temperature_and_train():
    gate = Gate(32, 4, hidden=16, router="cosine")
    features = 1e4 * torch.randn(8, 32)  # huge inputs: cosine logits stay within 1 / temperature
    logits = gate(features)
    assert logits.shape == (8, 4)
    assert logits.abs().max() <= 1 / gate.temperature + 1e-4
    logits.logsumexp(dim=-1).mean().backward()
    for name in ("expert_embeddings", "log_temperature"):
        assert getattr(gate, name).grad is not None and getattr(gate, name).grad.abs().sum() > 0, name
    assert gate.net[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        gate.log_temperature.fill_(-20.0)  # tau = 2e-9 asked, clamped to 0.01
    assert gate.temperature.item() == pytest.approx(0.01)
    assert gate(torch.randn(8, 32)).abs().max() <= 100 + 1e-3


def test_a_run_from_before_the_routing_settings_builds_as_it_was_trained():
    config = with_defaults(train_mlt_model.CONFIG)
    config["model"].update(backbone="resnet18", pretrained="none", task_specs=SEG)
    assert config["routing"]["gate_input"] == "low"  # the script's default since the experts grid chose it
    config["routing"]["gate_input"] = "high"  # the behaviour of runs written before the setting
    old = copy.deepcopy(config)
    for key in ("gate_input", "granularity", "region_grid", "router"):
        del old["routing"][key]  # a run written before these settings
    torch.manual_seed(0)
    new_model = build_model(config).eval()
    torch.manual_seed(0)
    old_model = build_model(old).eval()
    assert list(new_model.state_dict()) == list(old_model.state_dict())
    old_model.load_state_dict(new_model.state_dict())
    seen = []
    new_model.gates["segmentation_od"].register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = new_model(images)
        _, high = new_model.backbone(images)
    torch.testing.assert_close(seen[0], high.mean(dim=(2, 3)), rtol=0, atol=0)  # as before: pooled high-level
    assert out["routing"]["segmentation_od"].weights.shape == (2, 3)


@pytest.mark.parametrize("key, value", [("routing.granularity", "pixel"), ("routing.gate_input", "mid"),
                                        ("routing.router", "dot"), ("routing.region_grid", [4]),
                                        ("routing.region_grid", [0, 6])])
def test_each_new_routing_setting_is_validated_by_name(key, value):
    config = with_defaults(train_mlt_model.CONFIG)
    config["routing"][key.split(".")[1]] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_mlt_model.validate(config)


@pytest.mark.parametrize("key, value", [("granularity", "region"), ("gate_input", "both"), ("router", "cosine"),
                                        ("region_grid", [2, 3])])
def test_each_new_routing_setting_fixes_the_run_on_resume(key, value):
    old = with_defaults(train_mlt_model.CONFIG)
    new = copy.deepcopy(old)
    new["routing"][key] = value
    refused, applied = resume_changes(old, new, train_mlt_model.RESUME_RULES)
    assert resume_rule(f"routing.{key}", train_mlt_model.RESUME_RULES) == FIXES_THE_RUN
    assert len(refused) == 1 and refused[0].startswith(f"routing.{key}:") and not applied


def test_region_routing_with_a_shared_expert_adds_it_everywhere_and_a_shared_pool_is_refused():
    model = region_model(top_p=0.5, shared_experts=1).eval()
    images = torch.randn(2, 3, 64, 96)
    for task in SEG:
        fix_gate(model, task, cell_logits([[0] * CELLS, [1] * CELLS]))
    with torch.no_grad():
        out = model(images)["logits"]["segmentation_od"]
        context, low = expert_inputs(model, images)
        routed = model.experts["segmentation_od"]
        expected = torch.cat([routed[0](context[:1], low[:1]), routed[1](context[1:], low[1:])])
        expected = expected + model.shared_experts["segmentation_od"][0](context, low)
        expected = F.interpolate(expected, size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expert_pool"):
        region_model(expert_pool="shared")
    config = with_defaults(train_mlt_model.CONFIG)
    config["routing"]["granularity"], config["model"]["expert_pool"] = "region", "shared"
    with pytest.raises(ConfigError, match=r"routing\.granularity"):
        train_mlt_model.validate(config)
