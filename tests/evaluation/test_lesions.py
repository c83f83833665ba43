"""The lesion metrics both segmenting models report: resized or by sliding windows, and at the
masks' original size for the tasks that are IDRiD lesions."""
import pytest
import torch

from codebase.data.image_datasets import SegmentationDataset
from codebase.data.loaders import EpochLoader
from codebase.evaluation.evaluate import evaluate_segmentation
from codebase.evaluation.lesions import lesion_metrics
from codebase.tasks import parse_tasks

TASKS = parse_tasks({"segmentation_ma": 1, "segmentation_ex": 1, "segmentation_red": 1})  # red: MA or HE, no mask file


def toy_segment(images):
    """Fixed logits per task from the image's channels: [N, 3, h, w] -> {"logits": {task: [N, 1, h, w]}}."""
    return {"logits": {task.name: 4 * images[:, index:index + 1] - 1 for index, task in enumerate(TASKS)}}


@pytest.fixture(scope="module")
def loader(synthetic_root):
    return EpochLoader(SegmentationDataset(synthetic_root, "test", (64, 96)), 2, train=False, seed=0)


def test_resized_equals_the_split_routine_and_names_its_resolution(loader):
    metrics = lesion_metrics(toy_segment, loader, TASKS, "test")
    assert metrics.pop("resolution") == "resized 64x96"
    assert metrics == evaluate_segmentation(toy_segment, loader, TASKS, torch.device("cpu"))


def test_one_window_over_the_whole_image_gives_the_resized_metrics(loader):
    whole = lesion_metrics(toy_segment, loader, TASKS, "test")
    windowed = lesion_metrics(toy_segment, loader, TASKS, "test", window=(64, 96))
    assert windowed["resolution"] == "sliding window 64x96 over 64x96"
    for task in TASKS:
        for name in ("aupr", "dice", "iou"):
            # undefined (NaN) on both sides where the resized test masks hold no pixel of the lesion (the
            # synthetic microaneurysms, 10-25 px across at 4288x2848, vanish at 64x96)
            assert windowed[task.key][name] == pytest.approx(whole[task.key][name], abs=1e-3, nan_ok=True), \
                (task.key, name)


def test_full_resolution_only_for_the_idrid_lesions_and_the_meter_on_request(loader):
    metrics, meter = lesion_metrics(toy_segment, loader, TASKS, "test", full_resolution=True, keep_meter=True)
    assert {"aupr_fullres", "dice_fullres"} <= set(metrics["MA"]) and "aupr_fullres" in metrics["EX"]
    assert "aupr_fullres" not in metrics["RED"]  # a derived target has no mask file to score against
    assert metrics["resolution_fullres"].startswith("original")
    precision, recall = meter.pr_curve("EX")
    assert len(precision) == len(recall)


def test_a_routing_model_keeps_its_routing_statistics(loader):
    from codebase.networks.routing import route

    def routed(images):
        out = toy_segment(images)
        gate = torch.zeros(images.shape[0], 2)
        out["routing"] = {task.name: route(gate, 0.8) for task in TASKS}
        return out

    assert set(lesion_metrics(routed, loader, TASKS, "test")["routing"]) == {task.name for task in TASKS}
    assert "routing" not in lesion_metrics(routed, loader, TASKS, "test", window=(32, 48))  # windows: none
