"""The registry: every method found, settings declared once and checked by name."""
import pytest
import torch

from codebase.training.weighting import (
    WEIGHTINGS,
    GradientWeighting,
    Weighting,
    make_weighting,
    registry,
)
from tests.training.weighting.toy import TASKS, losses_of


def test_registry_holds_every_method():
    assert set(WEIGHTINGS) >= {"fixed", "uncertainty", "dwa", "rlw", "famo", "gradnorm", "pcgrad", "cagrad"}
    assert {name for name, cls in WEIGHTINGS.items() if issubclass(cls, GradientWeighting)} == {
        "gradnorm", "pcgrad", "cagrad", "mgda", "imtl_g", "upgrad", "dualproj", "aligned_mtl", "gradvac", "fairgrad",
        "nash_mtl"}


def test_a_weighting_added_by_one_registry_entry_is_found(monkeypatch):
    monkeypatch.setattr(registry, "WEIGHTINGS", dict(WEIGHTINGS))

    @registry.register("halved")
    class Halved(Weighting):
        setting_prefix = "halved_"
        settings = {"factor": registry.Setting(0.5, float, lambda v: v > 0, "> 0")}

        def __init__(self, tasks, factor=0.5):
            super().__init__(tasks)
            self.factor = factor

        def combine(self, losses):
            return self.factor * super().combine(losses)

    made = registry.make_weighting("halved", TASKS, {"halved_factor": 0.25, "cagrad_c": 0.1})
    assert isinstance(made, Halved) and made.factor == 0.25
    assert float(made.combine(losses_of(2.0, 6.0))) == 2.0
    assert "halved_factor" in registry.default_settings()
    assert "halved" not in WEIGHTINGS  # the registry proper is untouched


def test_make_weighting_rejects_bad_names_and_settings():
    with pytest.raises(ValueError, match=r"loss.weighting must be one of .*cagrad.*got 'nash'"):
        make_weighting("nash", TASKS, {})
    with pytest.raises(ValueError, match=r"unknown loss weighting settings loss.dwa_temp; dwa takes loss.dwa_temperature"):
        make_weighting("dwa", TASKS, {"dwa_temp": 2.0})
    with pytest.raises(ValueError, match=r"loss.dwa_temperature must be > 0, got -1.0"):
        make_weighting("dwa", TASKS, {"dwa_temperature": -1})
    with pytest.raises(ValueError, match=r"loss.cagrad_c must be a float, got 'big'"):
        make_weighting("cagrad", TASKS, {"cagrad_c": "big"})
    with pytest.raises(ValueError, match=r"loss.cagrad_rescale must be a bool"):
        make_weighting("cagrad", TASKS, {"cagrad_rescale": 1})
    with pytest.raises(ValueError, match=r"loss.rlw_seed must be a int, got True"):
        make_weighting("rlw", TASKS, {"rlw_seed": True})
    with pytest.raises(ValueError, match=r"loss.task_weights names tasks not in task_specs: \['c'\]"):
        make_weighting("fixed", TASKS, {"task_weights": {"c": 2.0}})
    with pytest.raises(ValueError, match=r"loss.task_weights must be a \{task: non-negative number\}"):
        make_weighting("fixed", TASKS, {"task_weights": {"a": -1.0}})
    with pytest.raises(ValueError, match="distinct task names"):
        make_weighting("fixed", ["a", "a"], {})
    # Other methods' keys (a config lists every default) are accepted.
    weighting = make_weighting("cagrad", TASKS, registry.default_settings() | {"cagrad_c": 0.0})
    assert weighting.c == 0.0
    with pytest.raises(ValueError, match=r"must be a non-empty subset of \('a', 'b'\)"):
        weighting.combine({"z": torch.tensor(1.0)})


def test_optional_packages_and_text_settings(monkeypatch):
    monkeypatch.setattr(WEIGHTINGS["upgrad"], "requires", ("no_such_package_for_this_test", "numpy"))
    monkeypatch.setattr(WEIGHTINGS["upgrad"], "install", "pip install it")
    assert registry.missing_packages("upgrad") == ["no_such_package_for_this_test"]
    assert "upgrad" not in registry.installed_weightings() and "mgda" in registry.installed_weightings()
    with pytest.raises(ValueError, match=r"^loss.weighting='upgrad': upgrad needs no_such_package_for_this_test, "
                                         r"not installed: pip install it$"):
        make_weighting("upgrad", TASKS, {})
    assert registry.install_problem("mgda") is None
    rules = registry.setting_rules()
    assert rules["loss.aligned_mtl_scale_mode"].check("median") and not rules["loss.aligned_mtl_scale_mode"].check(3)
    assert rules["loss.aligned_mtl_scale_mode"].expected == "a text one of 'min', 'median', 'rmse'"
