"""Every setting of every train script has a rule, checked before anything runs, and a rule on --resume."""
import copy
import math

import pytest
import torch

import train_classifier
import train_mlt_model
import train_segmentation
from codebase.config import (
    FIXES_THE_RUN,
    ConfigError,
    flatten,
    number,
    resume_changes,
    resume_rule,
    set_value,
    uncovered_settings,
    with_defaults,
)
from codebase.training.run_folder import Run

SCRIPTS = [train_classifier, train_segmentation, train_mlt_model]


def assign(config, key, value):
    """Put ``value`` at ``key`` as a caller of main(config) could, without --set's type coercion."""
    *parents, leaf = key.split(".")
    for name in parents:
        config = config[name]
    config[leaf] = value


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
def test_every_setting_has_a_rule_and_every_rule_a_setting(script):
    config = with_defaults(script.CONFIG)
    assert uncovered_settings(config, script.RULES) == []
    flat = flatten(config)
    assert [key for key in script.RULES if key not in flat and not any(k.startswith(key + ".") for k in flat)] == []
    script.validate(config)  # the defaults pass
    demo = with_defaults(script.CONFIG)
    for key, value in script.DEMO.items():
        set_value(demo, key, value)
    script.validate(demo)


BAD = [
    ("optim.lr", math.nan), ("optim.lr", math.inf), ("optim.lr", 0.0), ("optim.weight_decay", -1.0),
    ("train.batch_size", 0), ("train.epochs", True), ("data.num_workers", -1), ("run.name", ""),
    ("run.name", "../elsewhere"), ("seed", -1), ("schedule.kind", "linear"), ("train.amp", "fp8"),
    ("model.backbone", "vgg16"),
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("key, value", BAD)
def test_bad_values_are_refused_naming_the_key(script, key, value):
    config = with_defaults(script.CONFIG)
    assign(config, key, value)
    with pytest.raises(ConfigError, match=f"^{key}="):
        script.validate(config)


@pytest.mark.parametrize("script, key, value", [
    (train_mlt_model, "data.grading_size", [0, 0]),
    (train_mlt_model, "model.task_specs", {"classification_rg": 5.0}),
    (train_mlt_model, "model.task_specs", {}),
    (train_mlt_model, "loss.task_weights", {"segmentation_xx": 1.0}),
    (train_mlt_model, "routing.top_p", 0.0),
    (train_segmentation, "model.output_stride", 32),
    (train_segmentation, "data.crop_size", [4000, 4000]),
    (train_segmentation, "loss.task_weights", {"segmentation_ma": math.nan}),
    (train_classifier, "model.dropout", 1.0),
])
def test_script_specific_rules(script, key, value):
    config = with_defaults(script.CONFIG)
    assign(config, key, value)
    with pytest.raises(ConfigError, match=key.split(".")[0]):
        script.validate(config)


def test_number_rule_bounds_and_texts():
    assert number(0, 1, low_open=True).expected == "a number in (0, 1]"
    assert not number(0).check(True) and not number(0).check(math.nan) and number(0).check(0)


def test_a_weighting_whose_optional_packages_are_missing_is_refused_saying_how_to_install(monkeypatch):
    from codebase.training.weighting import WEIGHTINGS
    monkeypatch.setattr(WEIGHTINGS["mgda"], "requires", ("no_such_package_for_this_test",))
    monkeypatch.setattr(WEIGHTINGS["mgda"], "install", "pip install no_such_package_for_this_test")
    config = with_defaults(train_mlt_model.CONFIG)
    assign(config, "loss.weighting", "mgda")
    with pytest.raises(ConfigError, match=r"^loss.weighting='mgda': expected a method this environment can run "
                                          r"\(mgda needs no_such_package_for_this_test, not installed: pip install "):
        train_mlt_model.validate(config)
    assign(config, "loss.weighting", "upgrad")
    train_mlt_model.validate(config)


# ----------------------------------------------------------------------------- the rule of each setting on --resume
def other_value(value):
    """A value different from ``value`` (of its type where there is one); validity does not matter here."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list):
        return value + value[:1] if value else [1]
    if isinstance(value, dict):
        return {**value, "other": 1}
    return "other"


def resumable_folder(script, save_dir):
    """The script's default config pointed at save_dir, and a run folder whose checkpoint records it."""
    config = with_defaults(script.CONFIG)
    config.update(device="cpu")
    config["run"].update(save_dir=str(save_dir), name="earlier")
    folder = save_dir / "earlier"
    folder.mkdir(parents=True)
    torch.save({"epoch": 1, "model": {}, "config": config, "history": []}, folder / "checkpoint.pth")
    return config, folder


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
def test_every_setting_either_may_change_on_resume_or_fixes_the_run_and_the_rule_holds(script, tmp_path):
    config, folder = resumable_folder(script, tmp_path)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    demo = with_defaults(script.CONFIG)
    for key, value in script.DEMO.items():
        set_value(demo, key, value)
    settings = flatten(config).keys() | flatten(demo).keys()
    assert [key for key in settings if resume_rule(key, script.RESUME_RULES) is None] == []
    fixed = [key for key in settings if resume_rule(key, script.RESUME_RULES) == FIXES_THE_RUN]
    assert {"seed", "model.backbone", "data.validation", "loss.task_weights", "train.batch_size"} <= set(fixed)
    for key in sorted(settings):
        changed = copy.deepcopy(config)
        old = flatten(config).get(key)
        assign(changed, key, other_value(old))
        refused, applied = resume_changes(config, changed, script.RESUME_RULES)
        if key == "run.resume":
            continue
        if key not in fixed:
            assert refused == [] and [line.split(":")[0] for line in applied] == [key]
            continue
        assert refused and all(line.startswith(key) for line in refused) and applied == []
        with pytest.raises(ConfigError) as error:  # refused by the run folder, before any state is loaded
            Run(changed, script.RESUME_RULES)
        message = str(error.value)
        assert "\n" not in message and f"cannot resume {folder}" in message and "--no-resume" in message
        assert all(line in message for line in refused), message
        if not isinstance(old, dict):
            assert f"{key}: {old!r} (checkpoint) -> {other_value(old)!r} (now)" in message, message
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
