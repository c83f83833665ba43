"""Mutual information between an image's expert and its labels: the estimate and its meter."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from codebase.evaluation.routing_information import (
    RoutingInformationMeter,
    contingency,
    information_summary,
    mutual_information,
    table_information,
)
from codebase.networks.routing import Routing


def test_independent_labels_carry_no_information():
    assert table_information(np.outer([3, 1, 2], [2, 2, 4])) == pytest.approx(0.0, abs=1e-12)  # a product table
    a = np.repeat([0, 1, 2], 4)
    b = np.tile([0, 1, 2, 3], 3)  # every pair equally often
    assert mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_a_one_to_one_map_of_k_equally_likely_values_carries_log_k(k):
    a = np.repeat(np.arange(k), 7)
    assert mutual_information(a, (a + 1) % k) == pytest.approx(math.log(k))
    assert information_summary(np.eye(k, dtype=np.int64) * 7, "camera")["camera_mi_normalised"] == pytest.approx(1.0)


def test_agrees_with_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 50), rng.integers(0, 6, 50)
        assert mutual_information(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-12)
        assert table_information(contingency(a, b)) == pytest.approx(mutual_info_score(a, b), abs=1e-12)
    names = np.array(["idrid", "ddr", "notched"])[rng.integers(0, 3, 40)]  # labels need not be numbers
    experts = rng.integers(0, 2, 40)
    assert mutual_information(names, experts) == pytest.approx(mutual_info_score(names, experts), abs=1e-12)


def test_summary_states_images_and_the_plug_in_bias():
    table = np.array([[3, 0], [1, 4], [0, 0]])  # a value never seen is no row
    summary = information_summary(table, "grade")
    assert summary["grade_mi_images"] == 8 and summary["grade_mi_bias"] == pytest.approx(1 * 1 / 16)
    assert summary["grade_mi_normalised"] == pytest.approx(summary["grade_mi"] / math.log(2))
    assert "camera_mi_normalised" not in information_summary(np.array([[5, 2]]), "camera")  # one value: K = 1


def routing_choosing(experts, count=3):
    weights = torch.nn.functional.one_hot(torch.tensor(experts), count).float() * 0.6 + 0.4 / count
    return Routing(weights, weights, torch.ones_like(weights, dtype=torch.bool))


def test_meter_counts_each_images_top_expert_against_its_labels_over_batches():
    meter = RoutingInformationMeter({"camera": 2, "grade": 5}, {"camera": "no camera", "grade": "no grade"})
    # camera 0 always to expert 2, camera 1 always to expert 0; grades independent of the expert
    meter.update({"t": routing_choosing([2, 0, 2])},
                 {"camera": torch.tensor([0, 1, 0]), "grade": torch.tensor([1, 1, 3])})
    meter.update({"t": routing_choosing([0, 2])}, {"camera": torch.tensor([1, -1]), "grade": torch.tensor([3, 1])})
    stats = meter.compute()["t"]
    assert stats["camera_mi_images"] == 4  # the image of unknown camera is not counted
    assert stats["camera_mi"] == pytest.approx(math.log(2)) and stats["camera_mi_normalised"] == pytest.approx(1.0)
    assert stats["grade_mi_images"] == 5
    assert stats["grade_mi"] == pytest.approx(mutual_information([1, 1, 3, 3, 1], [2, 0, 2, 0, 2]))


def test_meter_reports_a_label_absent_with_its_reason_not_zero():
    meter = RoutingInformationMeter({"camera": 0}, {"camera": "no camera known", "grade": "not graded"})
    meter.update({"t": routing_choosing([1, 2])}, {"camera": torch.tensor([-1, -1])})
    assert meter.compute() == {"t": {"camera_mi_absent": "no camera known", "grade_mi_absent": "not graded"}}
