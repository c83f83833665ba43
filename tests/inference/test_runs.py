"""Rebuilding runs from their folders: the kind recorded in config.json picks the builder."""
import json

import pytest
import torch

import train_classifier
import train_mlt_model
import train_segmentation
from codebase.config import parse_cli
from inference.runs import (
    MODEL_KINDS,
    RunError,
    build_model,
    load_run,
    open_run,
    run_kind,
)

SMALL = {
    "classifier": (train_classifier, ["model.backbone=resnet18", "model.pretrained=none", "model.head_hidden=8",
                                      "data.image_size=64,96"]),
    "segmentation": (train_segmentation, ["model.backbone=resnet18", "model.pretrained=none", "model.output_stride=16",
                                          "model.aspp_channels=8", "model.decoder_channels=8",
                                          "data.image_size=64,96", "data.crop_size=64,96"]),
    "multitask": (train_mlt_model, ["model.backbone=resnet18", "model.pretrained=none", "model.aspp_channels=8",
                                    "model.decoder_channels=8", "model.head_hidden=8", "data.grading_size=64,96",
                                    "data.segmentation_size=64,96"]),
}


def small_config(kind):
    script, settings = SMALL[kind]
    return parse_cli(script.CONFIG, [arg for setting in settings for arg in ("--set", setting)])


def write_run(folder, config, model=None):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save((model or build_model(config)).state_dict(), folder / "model.pth")
    return folder


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_every_kind_is_recorded_and_rebuilt_with_its_weights(tmp_path, kind):
    config = small_config(kind)
    assert config["kind"] == kind
    model = build_model(config)
    folder = write_run(tmp_path / kind, config, model)
    run = load_run(folder)
    assert run.kind == kind and not run.model.training
    for name, value in model.state_dict().items():
        torch.testing.assert_close(run.model.state_dict()[name], value)
    sides = run.input_sizes()
    for side, size in sides.items():
        out = run.predict(torch.randn(1, 3, *size), side=side)
        assert {task.name for task in run.tasks(side)} <= set(out["logits"])


def test_runs_written_before_the_kind_was_recorded_still_load(tmp_path):
    """Older config.json files have no "kind" (and DeepLabV3+ runs one model.channels for both widths)."""
    for kind in MODEL_KINDS:
        config = small_config(kind)
        del config["kind"]
        if kind == "segmentation":
            config["model"]["channels"] = config["model"].pop("aspp_channels")
            del config["model"]["decoder_channels"]
        assert run_kind(config) == kind
        assert load_run(write_run(tmp_path / kind, config)).kind == kind


def test_unknown_kind_and_foreign_weights_are_run_errors_naming_the_folder(tmp_path):
    classifier = build_model(small_config("classifier"))
    unknown = write_run(tmp_path / "unknown", dict(small_config("classifier"), kind="transformer"), classifier)
    with pytest.raises(RunError, match="kind='transformer': expected one of classifier, segmentation, multitask"):
        open_run(unknown, "cpu")
    mixed = write_run(tmp_path / "mixed", small_config("segmentation"), classifier)
    with pytest.raises(RunError, match=str(mixed)):
        open_run(mixed, "cpu")
