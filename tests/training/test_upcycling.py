"""Sparse upcycling: a multi-task MoE model whose experts start as perturbed copies of a trained run's."""
import copy
import json

import pytest
import torch

import train_mlt_model
from codebase.config import ConfigError, with_defaults
from codebase.model import build_model
from codebase.training.upcycling import NOISE_SCALE, upcycle

SPECS = {"classification_rg": 5, "segmentation_od": 1}


def tiny_config(**model):
    config = with_defaults(train_mlt_model.CONFIG)
    config["model"].update({"backbone": "resnet18", "pretrained": "none", "task_specs": SPECS, "aspp_channels": 16,
                            "decoder_channels": 8, "head_hidden": 16, **model})
    return config


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A saved 1-expert run folder (config.json, model.pth) with weights moved away from their init."""
    folder = tmp_path_factory.mktemp("upcycling") / "dense"
    folder.mkdir()
    config = tiny_config(num_experts=1)
    torch.manual_seed(1)
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "model.pth")
    return folder, model.state_dict()


def test_upcycled_experts_are_perturbed_copies_of_the_source_expert_and_the_backbone_is_equal(source):
    folder, weights = source
    config = tiny_config(num_experts=3, shared_experts=1, init_from=str(folder))
    train_mlt_model.validate(config)
    torch.manual_seed(0)
    model = build_model(config)
    gate_before = model.gates["classification_rg"].net[0].weight.clone()
    assert "upcycled from" in upcycle(model, config)
    state = model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights if k.startswith(("backbone.", "aspp.")))
    assert torch.equal(model.gates["classification_rg"].net[0].weight, gate_before)  # fresh gates
    for task in SPECS:
        copies = [*model.experts[task].experts, *model.shared_experts[task].experts]
        assert len(copies) == 4
        for name, original in weights.items():
            prefix = f"experts.{task}.experts.0."
            if not name.startswith(prefix):
                continue
            tail = name[len(prefix):]
            values = [c.state_dict()[tail] for c in copies]
            if not original.is_floating_point() or "running" in tail:  # buffers: exact copies
                assert all(torch.equal(v, original) for v in values), name
                continue
            spread = original.float().std(correction=0)
            for value in values:  # within 6 sd of the stated noise, and not the identical tensor
                assert (value - original).abs().max() <= 6 * NOISE_SCALE * spread + 1e-7, name
                assert original.numel() == 1 or not torch.equal(value, original), name
            if original.numel() > 1:
                assert not torch.equal(values[0], values[1]), name  # the copies differ from each other
    second = build_model(config)
    upcycle(second, config)  # seeded by the run's seed: the same copies again
    assert all(torch.equal(a, b) for a, b in zip(model.experts.parameters(), second.experts.parameters()))


@pytest.mark.parametrize("change, key", [({"head_hidden": 32}, "model.head_hidden"),
                                         ({"backbone": "resnet34"}, "model.backbone"),
                                         ({"task_specs": {"classification_rg": 5}}, "model.task_specs")])
def test_a_source_with_another_model_is_refused_naming_the_key(source, change, key):
    config = tiny_config(num_experts=3, init_from=str(source[0]), **change)
    with pytest.raises(ConfigError, match=rf"model.init_from=.*{key}="):
        train_mlt_model.validate(config)


def test_upcycling_into_a_shared_pool_or_from_no_run_is_refused(source, tmp_path):
    with pytest.raises(ConfigError, match="model.init_from.*expert_pool"):
        train_mlt_model.validate(tiny_config(expert_pool="shared", init_from=str(source[0])))
    with pytest.raises(ConfigError, match="model.init_from.*config.json"):
        train_mlt_model.validate(tiny_config(init_from=str(tmp_path)))


def test_the_new_settings_fix_the_run_and_earlier_checkpoints_still_resume():
    from codebase.config import resume_changes
    from codebase.earlier_config import upgrade_config
    now = tiny_config()
    earlier = copy.deepcopy(now)
    for key in ("shared_experts", "expert_pool", "init_from"):
        del earlier["model"][key]  # a checkpoint written before these settings existed: no shared expert
    refused, _ = resume_changes(upgrade_config(earlier), now, train_mlt_model.RESUME_RULES)
    assert refused == ["model.shared_experts: 0 (checkpoint) -> 1 (now)"]  # today's default adds one: named
    now["model"]["shared_experts"] = 0  # resumed with --set model.shared_experts=0
    assert resume_changes(upgrade_config(earlier), now, train_mlt_model.RESUME_RULES)[0] == []
    for key, value in (("shared_experts", 2), ("expert_pool", "shared"), ("init_from", "saved/dense")):
        changed = copy.deepcopy(now)
        changed["model"][key] = value
        refused, _ = resume_changes(now, changed, train_mlt_model.RESUME_RULES)
        assert [line.split(":")[0] for line in refused] == [f"model.{key}"]
