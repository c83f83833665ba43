"""Tests of the training-curve plots drawn from a run's history."""

import matplotlib

from codebase.evaluation import plots


def _entry(epoch: int) -> dict:
    score = 0.1 * epoch
    return {
        "epoch": epoch, "lr": 0.001 / epoch, "time": 3.0,
        "train": {"loss": 1 - score, "loss_focal": 0.5 - score, "gate_loss": 0.1,
                  "task_weights": {"classification_rg": 1 + score, "segmentation_ma": 1 - score},
                  "routing": {"segmentation_ma": {"experts_per_image": 2.0, "usage": [0.5, 0.5]}}},
        "eval": {"loss": 1.1 - score,
                 "grading": {"rg_accuracy": score, "rg_kappa": score / 2, "rg_confusion": [[1, 0], [0, 1]]},
                 "segmentation": {"MA": {"iou": score, "dice": 2 * score, "aupr": score},
                                  "HE": {"iou": score / 2, "dice": score, "aupr": score / 3},
                                  "mean_iou": 0.75 * score, "mean_dice": 1.5 * score},
                 "routing": {"segmentation_ma": {"experts_per_image": 1.5, "usage": [0.7, 0.2, 0.1][:epoch + 1],
                                                 "camera_mi": 0.1 * epoch, "grade_mi_absent": "not graded"},
                             "classification_rg": {"experts_per_image": 1.0, "usage": [1.0, 0.0],
                                                   "camera_mi": 0.05, "grade_mi": 0.2 * epoch}}},
    }


def test_plot_history_draws_every_kind_of_curve(tmp_path):
    written = plots.plot_history([_entry(1), _entry(2), _entry(3)], tmp_path / "plots")
    names = {path.name for path in written}
    assert names == {"loss.png", "loss_components.png", "grading.png", "segmentation.png",
                     "router_usage.png", "router_experts.png", "router_information.png", "task_weights.png",
                     "learning_rate.png"}
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG")
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == sorted(names), "no temp files left"


def test_curves_are_labelled_per_lesion_task_and_expert():
    figures = plots.history_figures([_entry(1), _entry(2)])
    iou, dice, aupr = figures["segmentation"].axes
    assert (iou.get_title(), dice.get_title(), aupr.get_title()) == ("IoU", "Dice", "AUPR")
    assert [line.get_label() for line in iou.get_lines()] == ["MA", "HE", "mean"]
    usage_titles = [axes.get_title() for axes in figures["router_usage"].axes]
    assert usage_titles == ["segmentation_ma (train)", "segmentation_ma", "classification_rg"]
    eval_usage = figures["router_usage"].axes[1]
    assert [line.get_label() for line in eval_usage.get_lines()] == ["expert 0", "expert 1", "expert 2"]
    camera, grade = figures["router_information"].axes
    assert [line.get_label() for line in camera.get_lines()] == ["segmentation_ma", "classification_rg"]
    assert [line.get_label() for line in grade.get_lines()] == ["classification_rg"]
    assert list(grade.get_lines()[0].get_ydata()) == [0.2, 0.4]
    components = [line.get_label() for line in figures["loss_components"].axes[0].get_lines()]
    assert components == ["train/loss_focal", "train/gate_loss"]


def test_task_weights_are_one_curve_per_task_per_epoch():
    history = [_entry(1), _entry(2), {"epoch": 3, "train": {"loss": 0.5}}, _entry(4)]
    (axes,) = plots.history_figures(history)["task_weights"].axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert set(lines) == {"classification_rg", "segmentation_ma"}  # nothing else in the panel
    assert list(lines["classification_rg"].get_xdata()) == [1, 2, 4]  # epochs that logged weights
    assert list(lines["classification_rg"].get_ydata()) == [1.1, 1.2, 1.4]
    assert list(lines["segmentation_ma"].get_ydata()) == [0.9, 0.8, 0.6]
    assert axes.get_ylabel() == "weight"
    components = [line.get_label() for line in plots.history_figures(history)["loss_components"].axes[0].get_lines()]
    assert not any("task_weights" in label for label in components)
    assert "task_weights" not in plots.history_figures([{"epoch": 1, "train": {"loss": 1.0}}])


def test_missing_or_odd_entries_never_fail(tmp_path):
    assert plots.plot_history([], tmp_path) == []
    odd = [{"epoch": 1}, "not a dict", {"train": None, "eval": {"loss": None, "routing": {"x": {"usage": []}}}},
           {"eval": {"grading": {"rg_accuracy": float("nan")}, "segmentation": {"mean_aupr": 0.5}}}]
    names = {path.name for path in plots.plot_history(odd, tmp_path)}
    assert names == {"grading.png", "segmentation.png"}


def test_drawing_leaves_the_matplotlib_backend_alone():
    backend = matplotlib.get_backend()
    plots.history_figures([_entry(1)])
    assert matplotlib.get_backend() == backend


def test_redrawing_removes_the_file_of_a_renamed_figure_only(tmp_path):
    out = tmp_path / "plots"
    out.mkdir()
    (out / "classification.png").write_bytes(b"\x89PNG drawn under the old name")
    (out / "notes.png").write_bytes(b"the user's own file")
    plots.plot_history([{"epoch": 1, "train": {"loss": 1.0}}], out)  # no grading curve: nothing replaces it
    assert (out / "classification.png").exists()
    plots.plot_history([_entry(1)], out)
    assert (out / "grading.png").exists() and not (out / "classification.png").exists()
    assert (out / "notes.png").read_bytes() == b"the user's own file"
