"""Configuration: --set parsing, flags, demo overrides, validation."""

import json
from pathlib import Path

import harness_toy
import pytest

from codebase.config import (
    ConfigError,
    apply_overrides,
    parse_cli,
    require,
)

TOY_SCRIPT = Path(harness_toy.__file__)
REPO = TOY_SCRIPT.parents[1]


CONFIG = {
    "seed": 0,
    "run": {"name": "demo"},
    "data": {"root": "data", "image_size": [178, 268], "lesions": ["MA", "HE"], "weights": None},
    "model": {"backbone": "resnet50", "num_experts": 4, "pretrained": "imagenet",
              "task_specs": {"classification_rg": 5}},
    "optim": {"lr": 0.001, "weight_decay": 0.0001},
    "train": {"epochs": 30, "batch_size": 64, "amp": "auto", "shuffle": True},
}



def test_set_parses_values_to_the_defaults_types():
    config = apply_overrides(CONFIG, [
        "train.epochs=5", "optim.lr=3e-4", "optim.weight_decay=0", "train.shuffle=no",
        "model.backbone=resnet18", "data.image_size=128,192", "data.lesions=[\"EX\"]",
        "data.weights=[1.5, 2]", "model.task_specs.classification_rg=3",
    ])
    assert config["train"]["epochs"] == 5
    assert config["optim"]["lr"] == 3e-4
    assert config["optim"]["weight_decay"] == 0.0 and isinstance(config["optim"]["weight_decay"], float)
    assert config["train"]["shuffle"] is False
    assert config["model"]["backbone"] == "resnet18"
    assert config["data"]["image_size"] == [128, 192]
    assert config["data"]["lesions"] == ["EX"]
    assert config["data"]["weights"] == [1.5, 2]
    assert config["model"]["task_specs"] == {"classification_rg": 3}
    assert CONFIG["train"]["epochs"] == 30, "the input config must not change"


@pytest.mark.parametrize("text, expected", [("true", True), ("1", True), ("YES", True), ("on", True),
                                            ("false", False), ("0", False), ("No", False)])
def test_booleans(text, expected):
    assert apply_overrides(CONFIG, [f"train.shuffle={text}"])["train"]["shuffle"] is expected


def test_none_defaults_take_json_or_text_and_dicts_take_json():
    assert apply_overrides(CONFIG, ["data.weights=[1, 2]"])["data"]["weights"] == [1, 2]
    assert apply_overrides(CONFIG, ["data.weights=/some/file.pth"])["data"]["weights"] == "/some/file.pth"
    specs = apply_overrides(CONFIG, ['model.task_specs={"segmentation_ma": 1}'])["model"]["task_specs"]
    assert specs == {"segmentation_ma": 1}


def test_unknown_key_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'; did you mean 'optim\.lr'"):
        apply_overrides(CONFIG, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="'model.num_experts'"):
        apply_overrides(CONFIG, ["model.num_expert=2"])
    with pytest.raises(ConfigError, match="keys under 'optim': lr, weight_decay"):
        apply_overrides(CONFIG, ["optim.zzzzzzzz=1"])


@pytest.mark.parametrize("assignment, expected", [
    ("train.epochs=ten", "an integer"), ("train.epochs=2.5", "an integer"), ("optim.lr=fast", "a number"),
    ("train.shuffle=maybe", "a boolean"), ("data.image_size=128,wide", "a list of integers"),
    ("model.task_specs=[1]", "JSON object"),
])
def test_wrong_type_names_key_value_and_type(assignment, expected):
    key, value = assignment.split("=")
    with pytest.raises(ConfigError) as error:
        apply_overrides(CONFIG, [assignment])
    assert key in str(error.value) and value in str(error.value) and expected in str(error.value)


def test_set_needs_key_and_value():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(CONFIG, ["train.epochs"])


def test_parse_cli_flags_demo_and_order():
    demo = {"train.epochs": 6, "model.backbone": "resnet18", "data.root": "data/synthetic"}
    config = parse_cli(CONFIG, ["--demo", "--set", "train.epochs=2", "--device", "cpu",
                                        "--run-name", "trial", "--no-resume"], demo_overrides=demo)
    assert config["train"]["epochs"] == 2, "--set wins over --demo"
    assert config["model"]["backbone"] == "resnet18" and config["data"]["root"] == "data/synthetic"
    assert config["device"] == "cpu" and config["run"]["name"] == "trial"
    assert config["run"]["resume"] is False and config["run"]["demo"] is True
    assert config["run"]["save_dir"] == "saved"
    assert parse_cli(CONFIG, ["--data-root", "/idrid", "--resume"])["data"]["root"] == "/idrid"
    plain = parse_cli({**CONFIG, "extra": (1, 2)}, [])
    assert plain["run"]["resume"] is None and plain["extra"] == [1, 2]
    assert json.loads(json.dumps(plain)) == plain


def test_bad_demo_override_and_non_json_config_are_config_errors():
    with pytest.raises(ConfigError, match="train.epoch"):
        parse_cli(CONFIG, ["--demo"], demo_overrides={"train.epoch": 1})
    with pytest.raises(ConfigError, match="train.epochs=1.5"):
        parse_cli(CONFIG, ["--demo"], demo_overrides={"train.epochs": 1.5})
    with pytest.raises(ConfigError, match="data.root is a PosixPath|data.root is a WindowsPath"):
        parse_cli({**CONFIG, "data": {"root": Path("x")}}, [])


def test_validate_hook_with_require():
    def validate(config):
        require(config, "model.backbone", ("resnet18", "resnet50"))
        require(config, "train.batch_size", lambda size: size >= 1, "an integer >= 1")

    assert parse_cli(CONFIG, [], validate=validate)["train"]["batch_size"] == 64
    with pytest.raises(ConfigError, match=r"train.batch_size=0: expected an integer >= 1"):
        parse_cli(CONFIG, ["--set", "train.batch_size=0"], validate=validate)
    with pytest.raises(ConfigError, match="model.backbone='vgg': expected one of 'resnet18', 'resnet50'"):
        parse_cli(CONFIG, ["--set", "model.backbone=vgg"], validate=validate)




def test_a_renamed_key_says_what_to_write_instead():
    from codebase.config import ConfigError, parse_cli
    config = {"loss": {"task_weights": {}}}
    with pytest.raises(ConfigError, match=r"'loss.rg_weight' was renamed: set loss.task_weights instead.*"
                                          r"loss.task_weights=\{\"classification_rg\": 2.0\}"):
        parse_cli(config, ["--set", "loss.rg_weight=2"])
    with pytest.raises(ConfigError, match=r"\{\"segmentation_ma\": 2.0\}"):
        parse_cli(config, ["--set", "loss.lesion_weights.MA=2"])


def test_configs_of_earlier_releases_are_upgraded_to_todays_keys():
    from codebase.earlier_config import upgrade_config
    classifier = {"loss": {"rg_weight": 2.0, "mer_weight": 1.0, "focal_gamma": 4.0}, "seed": 0}
    assert upgrade_config(classifier) == {
        "loss": {"focal_gamma": 4.0, "task_weights": {"classification_rg": 2.0}}, "seed": 0}  # 1: unlisted
    assert classifier["loss"]["rg_weight"] == 2.0  # the original is left alone
    segmentation = {"loss": {"lesion_weights": {"MA": 3.0, "OD": 1.0}}}
    assert upgrade_config(segmentation)["loss"] == {"task_weights": {"segmentation_ma": 3.0}}
    today = {"loss": {"task_weights": {"classification_rg": 2.0}}}
    assert upgrade_config(today) == today
