"""The grid report's routing mutual information: the mean over seeds per configuration and task, and its table."""
import json
import math

import pytest

from codebase.evaluation.routing_information import NO_GRADE
from codebase.training.run_folder import TEST_METRICS_FILE
from experiments.report import information_lines, routing_summary


def seed_folder(tmp_path, seed, camera_mi, grade_mi):
    folder = tmp_path / f"seed_{seed}"
    folder.mkdir()
    stats = {"experts_per_image": 1.0, "usage": [0.5, 0.5], "busiest_share": 0.5}
    routing = {"classification_rg": {**stats, "camera_mi": camera_mi, "camera_mi_normalised": camera_mi / math.log(2),
                                     "camera_mi_bias": 0.05, "grade_mi": grade_mi, "grade_mi_normalised": 0.1,
                                     "grade_mi_bias": 0.2},
               "segmentation_od": {**stats, "camera_mi": 0.0, "camera_mi_normalised": 0.0, "camera_mi_bias": 0.25,
                                   "grade_mi_absent": NO_GRADE}}
    (folder / TEST_METRICS_FILE).write_text(json.dumps({"split": "test", "last": {"epoch": 2,
                                                                                   "metrics": {"routing": routing}}}))
    return folder


def test_routing_summary_averages_the_information_over_seeds_and_keeps_the_reason_it_is_absent(tmp_path):
    folders = [seed_folder(tmp_path, 0, 0.2, 0.1), seed_folder(tmp_path, 1, 0.4, 0.3)]
    summary = routing_summary(folders)
    camera = summary["classification_rg"]["information"]["camera"]
    assert camera["mi"] == pytest.approx(0.3) and camera["mi_per_seed"] == [0.2, 0.4]
    assert camera["mi_normalised"] == pytest.approx(0.3 / math.log(2)) and camera["bias"] == pytest.approx(0.05)
    assert summary["classification_rg"]["information"]["grade"]["mi"] == pytest.approx(0.2)
    assert summary["segmentation_od"]["information"]["grade"] == {"absent": NO_GRADE}
    assert summary["segmentation_od"]["information"]["camera"]["mi"] == 0.0  # measured zero, not absent


def test_results_md_shows_a_table_per_configuration_and_task_with_absent_values_explained(tmp_path):
    routed = {"mlt_default": routing_summary([seed_folder(tmp_path, 0, 0.2, 0.1)])}
    text = "\n".join(information_lines(routed))
    assert "## Routing mutual information on the test split" in text
    normalised = 0.2 / math.log(2)
    assert f"| mlt_default | classification_rg | 0.200 ({normalised:.2f}) | 0.100 (0.10) | 0.050 / 0.200 |" in text
    assert "| mlt_default | segmentation_od | 0.000 (0.00) | – | 0.250 / – |" in text
    assert f"- grade not measured for segmentation_od: {NO_GRADE}." in text
