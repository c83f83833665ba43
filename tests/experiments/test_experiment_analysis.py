"""Pooling over seeds, paired differences and delta-m on hand-worked values; metrics of records."""
import math

import numpy as np
import pytest

from experiments.analysis import (
    delta_m,
    difference,
    pooled,
    run_metrics,
    summary,
    task_scores,
)


def test_summary_pools_seeds_per_resample():
    per_seed = np.array([[0.5, 0.4, 0.6, np.nan],
                         [0.7, 0.6, 0.8, 0.9]])  # [seeds, test set + 3 resamples]
    np.testing.assert_allclose(pooled(per_seed), [0.6, 0.5, 0.7, 0.9])  # undefined seed left out
    result = summary(per_seed)
    assert result["mean"] == pytest.approx(0.6)
    assert result["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert result["ci"] == pytest.approx(list(np.percentile([0.5, 0.7, 0.9], [2.5, 97.5])))
    assert result["seeds"] == [0.5, 0.7]
    assert math.isnan(summary(per_seed[:1])["std"])  # one seed: no spread


def test_difference_is_paired_over_the_same_resamples():
    mine = np.array([[0.6, 0.5, 0.9, 0.2]])
    reference = np.array([[0.5, 0.4, 0.8, 0.1]])  # every resample exactly 0.1 lower
    result = difference(mine, reference)
    assert result["difference"] == pytest.approx(0.1)
    assert result["ci"] == pytest.approx([0.1, 0.1])  # unpaired intervals would overlap widely


def test_delta_m_hand_worked():
    multitask = {"rg_kappa": np.array([[0.6, 0.6]]), "mer_kappa": np.array([[0.5, 0.5]]),
                 "MA_aupr": np.array([[0.3, 0.3]]), "rg_accuracy": np.array([[0.9, 0.9]])}
    baselines = {"rg_kappa": np.array([[0.5, 0.4]]), "MA_aupr": np.array([[0.4, 0.4]]),
                 "rg_accuracy": np.array([[0.1, 0.1]])}
    result = delta_m(multitask, baselines)
    # RG: (0.6 - 0.5) / 0.5 = +20 %; MA: (0.3 - 0.4) / 0.4 = -25 %; MER has no baseline; accuracy is not primary.
    assert result["delta_m_percent"] == pytest.approx(-2.5)
    assert result["tasks"] == {"classification_rg": "rg_kappa", "segmentation_ma": "MA_aupr"}
    assert result["ci"] == pytest.approx([100 * (0.5 - 0.25) / 2] * 2)  # resample: RG +50 %, MA -25 %
    assert delta_m(multitask, {}) is None
    zero = delta_m({"rg_kappa": np.array([[0.5, 0.5]])}, {"rg_kappa": np.array([[0.0, 0.0]])})
    assert math.isnan(zero["delta_m_percent"])


def test_task_scores_names_primary_scores():
    assert task_scores(["rg_kappa", "OD_aupr", "mean_aupr", "OD_dice"]) == {
        "classification_rg": "rg_kappa", "segmentation_od": "OD_aupr"}


def test_run_metrics_of_hand_records():
    records = {
        "grading": {"rg_true": np.array([0, 1, 2]), "rg_predicted": np.array([0, 1, 1]),
                    "mer_true": np.array([0, 0, 1]), "mer_predicted": np.array([0, 1, 1])},
        "segmentation": {"lesions": np.array(["EX", "OD"]),
                         "counts": np.array([[[2, 0, 1], [0, 0, 0]], [[1, 1, 0], [3, 1, 0]]]),
                         "bins_EX": np.array([3, 7]), "histogram_EX": np.array([[[4, 0], [1, 2]], [[0, 1], [0, 1]]]),
                         "bins_OD": np.array([5]), "histogram_OD": np.array([[[9], [0]], [[0], [3]]])}}
    grading_weights = np.array([[1.0, 1, 1], [0, 0, 3]])  # test set; image 2 three times
    segmentation_weights = np.array([[1.0, 1], [2, 0]])
    metrics = run_metrics(records, grading_weights, segmentation_weights)
    assert metrics["rg_accuracy"] == pytest.approx([2 / 3, 0.0])
    assert metrics["mer_accuracy"] == pytest.approx([2 / 3, 1.0])
    assert metrics["joint_accuracy"] == pytest.approx([1 / 3, 0.0])
    assert metrics["EX_dice"] == pytest.approx([6 / 8, 4 / 5])  # TP 3 FP 1 FN 1; TP 4 FN 2 (image 0 twice)
    # EX test set: bin 7 holds 3 positives and 1 negative, bin 3 4 negatives and 1 positive.
    assert metrics["EX_aupr"][0] == pytest.approx(0.75 * 0.75 + 0.25 * 4 / 9)
    # Image 0 twice: bin 7 4 positives, no negative; bin 3 2 positives, 8 negatives.
    assert metrics["EX_aupr"][1] == pytest.approx((4 / 6) * 1.0 + (2 / 6) * (6 / 14))
    assert metrics["OD_aupr"][0] == pytest.approx(0.25)  # one bin: precision 3/12 at recall 1
    assert math.isnan(metrics["OD_aupr"][1]) and math.isnan(metrics["OD_dice"][1])  # no OD pixel in the resample
    assert metrics["mean_aupr"][1] == pytest.approx(metrics["EX_aupr"][1])  # undefined lesions left out
    tasks = ("rg_kappa", "mer_kappa", "EX_aupr", "OD_aupr")  # the monitor's mean_primary: one score per task
    assert metrics["mean_primary"][0] == pytest.approx(sum(metrics[m][0] for m in tasks) / 4)
    assert metrics["mean_primary"][1] == pytest.approx(sum(metrics[m][1] for m in tasks[:3]) / 3)  # OD undefined
    assert "mean_primary" not in run_metrics({"grading": records["grading"]}, grading_weights, None)


def test_runs_that_scored_different_images_are_refused_by_name():
    from experiments.records import check_same_images
    same = [{"grading": {"names": ["a", "b"]}}, {"grading": {"names": ["a", "b"]}, "segmentation": None}]
    check_same_images(same, "grading", "test split")
    check_same_images(same, "segmentation", "test split")  # no run scored this side: nothing to compare
    with pytest.raises(ValueError, match=r"aptos: the runs' grading records list different images"):
        check_same_images(same + [{"grading": {"names": ["a", "c"]}}], "grading", "aptos")
