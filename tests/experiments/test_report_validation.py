"""The grid report's validation section: each configuration's scores at its best epoch, for choosing."""
import json

import pytest

from codebase.training.run_folder import HISTORY_FILE
from experiments.report import validation_lines, validation_summary


def run_folder(tmp_path, name, monitored):
    """A run whose history evaluated the validation split at some epochs: [(monitor, rg kappa), ...]."""
    folder = tmp_path / name
    folder.mkdir()
    history = [{"epoch": 1, "train": {"loss": 1.0}}]  # an epoch without evaluation has no monitor
    for epoch, (monitor, kappa) in enumerate(monitored, start=2):
        history.append({"epoch": epoch, "train": {"loss": 1.0}, "monitor": monitor,
                        "validation": {"grading": {"rg_kappa": kappa, "mer_kappa": kappa / 2},
                                       "segmentation": {"mean_aupr": monitor}}})
    (folder / HISTORY_FILE).write_text(json.dumps(history))
    return folder


def test_the_best_monitored_evaluation_of_each_seed_is_averaged(tmp_path):
    folders = [run_folder(tmp_path, "seed_0", [(0.4, 0.1), (0.6, 0.5), (0.5, 0.9)]),  # best: the 0.6 epoch
               run_folder(tmp_path, "seed_1", [(0.2, 0.3)])]
    summary = validation_summary(folders)
    assert summary["monitor"]["per_seed"] == [0.6, 0.2]
    assert summary["monitor"]["mean"] == pytest.approx(0.4) and summary["monitor"]["std"] == pytest.approx(0.2)
    assert summary["rg_kappa"]["per_seed"] == [0.5, 0.3]  # the best epoch's, not the highest kappa seen
    assert summary["mer_kappa"]["mean"] == pytest.approx(0.2)
    assert validation_summary([run_folder(tmp_path, "no_validation", [])]) == {}


def test_the_section_names_the_configuration_best_on_validation(tmp_path):
    configurations = {
        "mlt_1_expert": {"validation": validation_summary([run_folder(tmp_path, "a", [(0.5, 0.4)])])},
        "mlt_default": {"validation": validation_summary([run_folder(tmp_path, "b", [(0.7, 0.6)])])},
        "classifier": {"validation": {}}}  # left out: no monitored evaluation
    text = "\n".join(validation_lines(configurations))
    assert "## Validation (for choosing a configuration)" in text
    assert "Highest monitored score: `mlt_default`" in text
    assert "| mlt_default | 0.700 ± 0.000 | 0.600 ± 0.000 | 0.300 ± 0.000 | 0.700 ± 0.000 |" in text
    assert "classifier" not in text
    assert validation_lines({"classifier": {"validation": {}}}) == []


def test_the_budget_paragraph_names_configurations_with_steps_of_their_own():
    from experiments.report import step_exceptions
    configurations = {"mlt_1_expert": {"optimizer_steps": 192, "upcycle_from": None},
                      "mlt_1_expert_96_steps": {"optimizer_steps": 96, "upcycle_from": None},
                      "mlt_upcycled": {"optimizer_steps": 96, "upcycle_from": "mlt_1_expert_96_steps"}}
    assert step_exceptions(configurations, 192) == [
        "Except: `mlt_1_expert_96_steps` takes 96 steps.",
        "Except: `mlt_upcycled` takes 96 steps, starting from `mlt_1_expert_96_steps`'s run of the same seed "
        "(upcycled; the two add up to the budget's 192).", ""]
    assert step_exceptions({"mlt_1_expert": configurations["mlt_1_expert"]}, 192) == []
