"""Always-on shared experts, one expert pool per side shared by the tasks' gates, and what they cost."""
import pytest
import torch
import torch.nn.functional as F
from tiny_models import SPECS, count_calls, small_model

import train_mlt_model
from codebase.config import ConfigError, parse_cli
from codebase.earlier_config import upgrade_config
from codebase.evaluation.cost import forward_flops
from codebase.model import build_model

TINY = dict(aspp_channels=16, decoder_channels=8, head_hidden=16, gate_hidden=8)
TWO = {"classification_rg": 5, "segmentation_od": 1}  # one task a side: fewer experts, a faster test


def fix_gate(model, task, logits):
    model.gates[task].forward = lambda pooled: logits.to(pooled.dtype)


def test_a_shared_expert_runs_on_every_image_in_top_p_mode_and_gets_gradient():
    model = small_model(TWO, shared_experts=1, **TINY).train()
    images = torch.randn(3, 3, 32, 32)
    for task in TWO:  # routed expert 0 alone for every image: experts 1 and 2 skipped
        fix_gate(model, task, torch.tensor([[6.0, -6.0, -12.0]]).expand(3, -1))
    shared = {task: count_calls(model.shared_experts[task][0]) for task in TWO}
    skipped = {task: count_calls(model.experts[task][2]) for task in TWO}
    out = model(images, dense=False)
    assert all(shared[task] == [3] and skipped[task] == [] for task in TWO)
    sum(v.float().mean() for v in out["logits"].values()).backward()
    for task in TWO:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_experts[task][0].parameters())
        assert all(p.grad is None for p in model.experts[task][2].parameters())
    # The task's output: the routed mixture (expert 0, weight 1) plus the shared expert's output.
    model.eval()
    with torch.no_grad():
        high = model.backbone(images)[1]
        rg = model(images, side="grading", dense=False)["logits"]["classification_rg"]
        expected = model.experts["classification_rg"][0](high) + model.shared_experts["classification_rg"][0](high)
    assert torch.allclose(rg, expected, atol=1e-5)


def test_several_shared_experts_add_their_mean_in_dense_mode():
    model = small_model(shared_experts=2, **TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(images, side="grading", dense=True)["logits"]["classification_mer"]
        high = model.backbone(images)[1]
        weights = torch.softmax(model.gates["classification_mer"](high.mean(dim=(2, 3))), -1)
        routed = sum(weights[:, e:e + 1] * model.experts["classification_mer"][e](high) for e in range(3))
        shared = model.shared_experts["classification_mer"]
        always = (shared[0](high) + shared[1](high)) / 2
    assert torch.allclose(out, routed + always, atol=1e-5)


def test_no_shared_experts_and_task_pools_keep_todays_parameter_names_and_old_weights_load():
    today = small_model(**TINY)
    names = set(today.state_dict())
    assert {name.split(".")[0] for name in names} == {"backbone", "aspp", "gates", "experts"}
    assert {name.split(".")[1] for name in names if name.startswith("experts.")} == set(SPECS)
    config = {"model": {"task_specs": SPECS, "backbone": "resnet18", "num_experts": 3, "pretrained": "none",
                        "aspp_channels": 16, "decoder_channels": 8, "head_hidden": 16},
              "routing": {"top_p": 0.8}}  # a run's config from before these settings: the defaults
    old = build_model(config)
    assert old.shared_experts is None and old.task_outputs is None
    saved = small_model(aspp_channels=16, decoder_channels=8, head_hidden=16).state_dict()  # gate_hidden 128
    old.load_state_dict(saved, strict=True)
    upgraded = upgrade_config(config)["model"]
    assert (upgraded["shared_experts"], upgraded["expert_pool"], upgraded["init_from"]) == (0, "task", None)
    routing = upgrade_config(config)["routing"]  # the routing of runs from before its settings, so they resume
    assert routing == {"top_p": 0.8, "gate_input": "high", "granularity": "image", "router": "linear",
                       "region_grid": [4, 6]}
    assert "shared_experts" not in upgrade_config({"model": {"backbone": "resnet18"}})["model"]  # not multi-task


def test_a_shared_pool_has_one_gate_per_task_over_the_same_experts():
    model = small_model(expert_pool="shared", **TINY).eval()
    assert set(model.experts) == {"pool_grading", "pool_segmentation"}
    assert set(model.gates) == set(SPECS) and all(model.gates[t].net[-1].out_features == 3 for t in SPECS)
    assert model.owner["classification_rg"] == model.owner["classification_mer"] == "pool_grading"
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images, dense=True)["logits"]
        low, high = model.backbone(images)
        pool = model.experts["pool_grading"]
        features = torch.stack([pool[e](high) for e in range(3)], dim=1)  # [B, 3, head_hidden]: shared
        for task, classes in (("classification_rg", 5), ("classification_mer", 3)):
            weights = torch.softmax(model.gates[task](high.mean(dim=(2, 3))), -1)
            expected = model.task_outputs[task]((features * weights.unsqueeze(-1)).sum(1))
            assert out[task].shape == (2, classes) and torch.allclose(out[task], expected, atol=1e-5)
        context = F.interpolate(model.aspp(high), size=low.shape[-2:], mode="bilinear")
        seg = model.experts["pool_segmentation"]
        weights = torch.softmax(model.gates["segmentation_od"](high.mean(dim=(2, 3))), -1)
        mixed = sum(weights[:, e, None, None, None] * seg[e](context, low) for e in range(3))
        expected = F.interpolate(model.task_outputs["segmentation_od"](mixed), size=(64, 64), mode="bilinear")
    assert torch.allclose(out["segmentation_od"], expected, atol=1e-5)


def test_a_shared_pool_runs_each_expert_once_on_the_images_any_task_selected():
    model = small_model(expert_pool="shared", **TINY).eval()
    images = torch.randn(3, 3, 64, 64)
    # RG: image 0 -> expert 0, images 1, 2 -> expert 1. MER: image 1 -> expert 0, images 0, 2 -> expert 1.
    fix_gate(model, "classification_rg", torch.tensor([[9.0, 0, -9], [0, 9.0, -9], [0, 9.0, -9]]))
    fix_gate(model, "classification_mer", torch.tensor([[0, 9.0, -9], [9.0, 0, -9], [0, 9.0, -9]]))
    calls = [count_calls(expert) for expert in model.experts["pool_grading"]]
    with torch.no_grad():
        out = model(images, side="grading", dense=False)["logits"]
        high = model.backbone(images)[1]
        pool = model.experts["pool_grading"]
    assert calls == [[2], [3], []]  # expert 0 once on images {0, 1}, expert 1 once on all three, 2 never
    rg = model.task_outputs["classification_rg"](torch.stack([pool[0](high[0:1])[0], pool[1](high[1:2])[0],
                                                               pool[1](high[2:3])[0]]))
    assert torch.allclose(out["classification_rg"], rg, atol=1e-5)


@pytest.mark.parametrize("pool", ["task", "shared"])
def test_flops_count_the_shared_experts(pool):
    """The FLOP counter the cost reports use (forward_flops: compare_models.py, experiments/cost.py,
    benchmarks) counts the shared experts: with one per unit, the count grows by exactly their own FLOPs."""
    images = torch.randn(1, 3, 32, 32)
    specs = {"classification_rg": 5, "classification_mer": 3, "segmentation_od": 1}  # a pool shared by two tasks
    without = small_model(specs, expert_pool=pool, **TINY).eval()
    model = small_model(specs, expert_pool=pool, shared_experts=1, **TINY).eval()
    for dense in (True, False):
        counted = forward_flops(model, lambda: model(images, dense=dense))
        added = counted["total"] - forward_flops(without, lambda: without(images, dense=dense))["total"]
        with torch.no_grad():
            low, high = model.backbone(images)
            context = F.interpolate(model.aspp(high), size=low.shape[-2:], mode="bilinear")
        direct = 0
        for key, bank in model.shared_experts.items():
            inputs = (high,) if "classification" in key or key == "pool_grading" else (context, low)
            direct += forward_flops(bank[0], lambda: bank[0](*inputs))["total"]
        assert direct > 0 and abs(added - direct) <= 0.01 * direct, (dense, added, direct)
        assert abs(counted["shared_experts"] - direct) <= 0.01 * direct, (dense, counted["shared_experts"], direct)


@pytest.mark.parametrize("setting, value, expected", [
    ("model.shared_experts", "-1", "model.shared_experts"),
    ("model.expert_pool", "tasks", "model.expert_pool"),
    ("model.init_from", "/no/such/run", "model.init_from"),
])
def test_each_setting_is_validated_by_name(setting, value, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_cli(train_mlt_model.CONFIG, ["--demo", "--set", f"{setting}={value}"], train_mlt_model.DEMO,
                  validate=train_mlt_model.validate)


@pytest.mark.parametrize("dense", [False, True])
def test_the_export_wrapper_mixes_a_shared_pool_and_shared_experts_as_the_model_does(dense):
    from inference.export import MixtureOfExpertsExport
    model = small_model(TWO, expert_pool="shared", shared_experts=1, top_p=0.5, **TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = MixtureOfExpertsExport(model, dense)(images)
        theirs = model(images, dense=dense)["logits"]
    for task, value in zip(TWO, ours):
        assert torch.allclose(value, theirs[task], atol=1e-5), task
