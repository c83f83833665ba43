"""codebase/training/earlier_names.py: a run folder written with the names of an earlier release reads
with today's, through run_folder's readers and every reader of a run folder."""
import json
from types import SimpleNamespace

from codebase.data.idrid import LESIONS
from codebase.evaluation.plots import history_figures
from codebase.training.earlier_names import upgrade_history, upgrade_test_metrics
from codebase.training.run_folder import read_history, read_test_metrics
from inference.report import history_or_empty

# A classifier's and a DeepLabV3+ run's files as an earlier release wrote them, and the same today.
GRADES = {"rg_accuracy": 0.3, "rg_kappa": 0.1, "rg_confusion": [[3, 1], [0, 2]], "rg_recall": [0.75, 1.0],
          "mer_accuracy": 0.6, "mer_kappa": 0.2, "mer_confusion": [[2]], "mer_recall": [1.0], "joint_accuracy": 0.25}
LESION_LOSSES = {lesion: {"loss_focal": 0.01 * index, "loss_dice": 0.9 - 0.1 * index}
                 for index, lesion in enumerate(LESIONS)}
OLD_CLASSIFIER = [{"epoch": 1, "lr": 0.001, "time": 2.0, "train": {"loss": 2.5, "loss_rg": 1.5, "loss_mer": 1.0},
                   "validation": GRADES, "monitor": 0.15},
                  {"epoch": 2, "lr": 0.001, "time": 2.0, "train": {"loss": 2.4, "loss_rg": 1.4, "loss_mer": 1.0},
                   "test": GRADES}]  # train.evaluate_on=test
CLASSIFIER = [{"epoch": 1, "lr": 0.001, "time": 2.0,
               "train": {"loss": 2.5, "components": {"loss_classification_rg": 1.5, "loss_classification_mer": 1.0}},
               "validation": {"grading": GRADES}, "monitor": 0.15},
              {"epoch": 2, "lr": 0.001, "time": 2.0,
               "train": {"loss": 2.4, "components": {"loss_classification_rg": 1.4, "loss_classification_mer": 1.0}},
               "test": {"grading": GRADES}}]
LESION_METRICS = {"segmentation": {"MA": {"aupr": 0.2}, "mean_aupr": 0.2, "resolution": "resized 64x96"}}
OLD_SEGMENTATION = [{"epoch": 1, "lr": 0.002, "time": 1.0, "validation": LESION_METRICS, "monitor": 0.2,
                     "train": {"loss": 4.0, "loss_focal": 0.1, "loss_dice": 3.9, "lesions": LESION_LOSSES}}]
SEGMENTATION = [{"epoch": 1, "lr": 0.002, "time": 1.0, "validation": LESION_METRICS, "monitor": 0.2,
                 "train": {"loss": 4.0, "components": {
                     "loss_segmentation_focal": 0.1, "loss_segmentation_dice": 3.9,
                     **{f"loss_segmentation_{lesion.lower()}_{part}": losses[f"loss_{part}"]
                        for lesion, losses in LESION_LOSSES.items() for part in ("focal", "dice")}}}}]


def old_run_folder(folder, history, test_metrics=None):
    folder.mkdir(parents=True)
    (folder / "history.json").write_text(json.dumps(history))
    if test_metrics is not None:
        (folder / "test_metrics.json").write_text(json.dumps(test_metrics))
    return folder


def test_history_and_test_metrics_of_an_earlier_release_read_with_todays_names(tmp_path):
    old_tested = {"split": "test", "last": {"epoch": 2, "metrics": GRADES},
                  "best": {"epoch": 1, "monitor": 0.15, "metrics": GRADES}}
    classifier = old_run_folder(tmp_path / "classifier", OLD_CLASSIFIER, old_tested)
    assert read_history(classifier) == CLASSIFIER
    assert read_test_metrics(classifier) == {"split": "test", "last": {"epoch": 2, "metrics": {"grading": GRADES}},
                                             "best": {"epoch": 1, "monitor": 0.15, "metrics": {"grading": GRADES}}}
    assert read_history(old_run_folder(tmp_path / "segmentation", OLD_SEGMENTATION)) == SEGMENTATION
    assert json.loads((classifier / "history.json").read_text()) == OLD_CLASSIFIER  # read, not rewritten
    for today in (CLASSIFIER, SEGMENTATION):
        assert upgrade_history(today) == today
    assert upgrade_test_metrics(read_test_metrics(classifier)) == read_test_metrics(classifier)


def test_the_readers_of_a_run_folder_see_todays_names_in_an_earlier_one(tmp_path):
    """compare_models.py's report and the plots (and the notebooks, through read_history) draw an
    earlier run's curves under today's names."""
    folder = old_run_folder(tmp_path / "classifier", OLD_CLASSIFIER)
    assert history_or_empty(SimpleNamespace(folder=folder)) == CLASSIFIER
    figures = history_figures(read_history(folder))
    (components,) = figures["loss_components"].axes
    assert [line.get_label() for line in components.get_lines()] == [
        "train/components/loss_classification_rg", "train/components/loss_classification_mer"]
    accuracy = figures["grading"].axes[0]
    assert "validation/grading/rg_accuracy" in [line.get_label() for line in accuracy.get_lines()]
    segmentation = history_figures(read_history(old_run_folder(tmp_path / "segmentation", OLD_SEGMENTATION)))
    labels = [line.get_label() for line in segmentation["loss_components"].axes[0].get_lines()]
    assert labels[:3] == ["train/components/loss_segmentation_focal", "train/components/loss_segmentation_dice",
                          "train/components/loss_segmentation_ma_focal"] and len(labels) == 12
