"""Routing statistics of an evaluation, counted exactly over its batches, and their mutual information
with the images' camera and grade."""
import math
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import small_model
from torch.utils.data import DataLoader

from codebase.data.image_datasets import GradingDataset, SegmentationDataset
from codebase.data.provenance import image_records
from codebase.engine import evaluate
from codebase.evaluation.evaluate import RoutingMeter, evaluate_grading
from codebase.evaluation.routing_information import NO_CAMERA, NO_GRADE, mutual_information
from codebase.networks.routing import Routing
from codebase.tasks import parse_tasks


def routing_of(mask):
    mask = torch.tensor(mask, dtype=torch.bool)
    weights = mask.float() / mask.sum(dim=1, keepdim=True)
    return Routing(weights, weights, mask)


def test_usage_experts_per_image_and_entropy_over_two_batches():
    meter = RoutingMeter()
    meter.update({"t": routing_of([[1, 0, 0], [1, 1, 0]])})
    meter.update({"t": routing_of([[0, 0, 1], [1, 0, 0]])})
    stats = meter.compute()["t"]
    assert stats["usage"] == [0.75, 0.25, 0.25]  # images that ran each expert, of 4
    assert stats["experts_per_image"] == pytest.approx(5 / 4) and stats["busiest_share"] == 0.75
    shares = [3 / 5, 1 / 5, 1 / 5]  # of the 5 dispatches
    assert stats["usage_entropy"] == pytest.approx(-sum(s * math.log(s) for s in shares) / math.log(3))


def test_one_expert_taking_every_image_has_zero_entropy_and_one_expert_is_balanced():
    meter = RoutingMeter()
    meter.update({"collapsed": routing_of([[0, 1], [0, 1]]), "single": routing_of([[1], [1]])})
    stats = meter.compute()
    assert stats["collapsed"]["usage"] == [0.0, 1.0] and stats["collapsed"]["usage_entropy"] == 0.0
    assert stats["single"]["usage_entropy"] == 1.0


@pytest.fixture(scope="module")
def routed_model():
    return small_model({"classification_rg": 5, "segmentation_od": 1}, experts=3).eval()


def camera_of(dataset):
    cameras = image_records(dataset.root)
    return [cameras[r.image_path.relative_to(dataset.root).as_posix()]["camera"] for r in dataset.records]


@pytest.mark.slow  # a multi-task model through both sides of a split
def test_evaluating_a_multitask_model_reports_each_tasks_information_with_camera_and_grade(
        synthetic_root, tmp_path, routed_model):
    grading = GradingDataset(synthetic_root, "test", (64, 96), cache_dir=tmp_path)
    segmentation = SegmentationDataset(synthetic_root, "test", (64, 96), cache_dir=tmp_path)
    loaders = {"grading": DataLoader(grading, batch_size=3), "segmentation": DataLoader(segmentation, batch_size=2)}
    routing = evaluate(routed_model, loaders, torch.device("cpu"))["routing"]
    for side, dataset, task in (("grading", grading, "classification_rg"), ("segmentation", segmentation,
                                                                            "segmentation_od")):
        with torch.no_grad():
            chosen = torch.cat([routed_model(batch["image"], side=side)["routing"][task].mixture.argmax(dim=1)
                                for batch in loaders[side]]).tolist()
        stats = routing[task]
        assert stats["camera_mi"] == pytest.approx(mutual_information(camera_of(dataset), chosen), abs=1e-9)
        assert stats["camera_mi_images"] == len(dataset)
        if side == "grading":
            assert stats["grade_mi"] == pytest.approx(mutual_information(dataset.labels[:, 0], chosen), abs=1e-9)
        else:
            assert stats["grade_mi_absent"] == NO_GRADE and "grade_mi" not in stats


def test_the_information_follows_a_routing_that_depends_on_the_image(synthetic_root, tmp_path):
    """A router sending each image to an expert by its brightness: what the evaluation reports is the
    plug-in MI of those choices with the cameras and grades (the images' cameras differ in colour)."""
    dataset = GradingDataset(synthetic_root, "train", (32, 48), cache_dir=tmp_path)

    def predict(images):  # expert 0, 1 or 2 by the image's mean value against fixed thresholds
        expert = torch.bucketize(images.mean(dim=(1, 2, 3)), torch.tensor([-0.9, -0.6]))
        weights = torch.nn.functional.one_hot(expert, 3).float()
        return {"logits": {"classification_rg": torch.zeros(len(images), 5)},
                "routing": {"classification_rg": Routing(weights, weights, weights.bool())}}

    rg = next(task for task in parse_tasks({"classification_rg": 5}))
    results = evaluate_grading(predict, DataLoader(dataset, batch_size=4), [rg], torch.device("cpu"))
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    chosen = torch.bucketize(images.mean(dim=(1, 2, 3)), torch.tensor([-0.9, -0.6])).tolist()
    stats = results["routing"]["classification_rg"]
    assert stats["camera_mi"] == pytest.approx(mutual_information(camera_of(dataset), chosen))
    assert stats["camera_mi"] > 0
    assert stats["grade_mi"] == pytest.approx(mutual_information(dataset.labels[:, 0], chosen))


def test_evaluation_without_a_known_camera_reports_the_camera_information_absent(synthetic_root, tmp_path,
                                                                                 routed_model):
    tree = Path(shutil.copytree(synthetic_root, tmp_path / "data", ignore=shutil.ignore_patterns(".cache")))
    (tree / "synthetic.json").unlink()  # as a real IDRiD tree
    loader = DataLoader(GradingDataset(tree, "test", (64, 96), cache_dir=tmp_path / "cache"), batch_size=5)
    stats = evaluate(routed_model, {"grading": loader}, torch.device("cpu"))["routing"]["classification_rg"]
    assert stats["camera_mi_absent"] == NO_CAMERA and "camera_mi" not in stats
    assert stats["grade_mi"] >= 0 and stats["grade_mi_images"] == len(loader.dataset)
