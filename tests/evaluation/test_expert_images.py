"""Which images each expert takes: the images that weigh most per expert, and their thumbnail figure."""
import pytest
import torch
from tiny_models import small_model

from codebase.data.image_datasets import GradingDataset, SegmentationDataset
from codebase.data.provenance import image_records
from codebase.evaluation.expert_images import expert_images, expert_images_figure, write_expert_images
from codebase.networks.routing import Routing

SIZE = (32, 48)


@pytest.fixture
def datasets(synthetic_root, tmp_path):
    return {"grading": GradingDataset(synthetic_root, "train", SIZE, cache_dir=tmp_path),
            "segmentation": SegmentationDataset(synthetic_root, "train", SIZE, cache_dir=tmp_path)}


def brightness_router(images, side):
    """Three experts' weights from each image's mean value: a brighter image weighs more for expert 2."""
    brightness = images.mean(dim=(1, 2, 3))
    weights = torch.softmax(torch.stack([-brightness, torch.zeros_like(brightness), brightness], dim=1) * 5, dim=1)
    task = "classification_rg" if side == "grading" else "segmentation_od"
    return {"routing": {task: Routing(weights, weights, torch.ones_like(weights, dtype=torch.bool))}}


def test_each_expert_gets_the_images_with_its_largest_routing_weight(datasets):
    picks = expert_images(brightness_router, datasets, "cpu", count=3, batch_size=4)
    assert set(picks) == {"classification_rg", "segmentation_od"}
    grading = picks["classification_rg"]
    brightness = torch.stack([datasets["grading"][i]["image"] for i in range(len(datasets["grading"]))]).mean(
        dim=(1, 2, 3))
    assert grading.side == "grading" and grading.weights.shape == (len(datasets["grading"]), 3)
    assert grading.top[2] == brightness.argsort(descending=True)[:3].tolist()  # the brightest
    assert grading.top[0] == brightness.argsort()[:3].tolist()  # the darkest
    assert sum(grading.chosen(e) for e in range(3)) == len(datasets["grading"])
    assert len(picks["segmentation_od"].top[1]) == 3 and picks["segmentation_od"].side == "segmentation"


def test_figure_has_one_row_per_task_and_expert_captioned_with_camera_and_grade(datasets):
    picks = expert_images(brightness_router, datasets, "cpu", count=4)
    figure = expert_images_figure(picks, datasets)
    rows = [axes for axes in figure.axes if axes.get_ylabel()]
    assert [axes.get_ylabel().split("\n")[:2] for axes in rows] == [
        [task, f"expert {e}"] for task in ("classification_rg", "segmentation_od") for e in range(3)]
    assert len(figure.axes) == 6 * 4  # four images per expert
    cameras = image_records(datasets["grading"].root)
    index = picks["classification_rg"].top[2][0]
    record = datasets["grading"].records[index]
    title = rows[2].get_title()
    camera = cameras[record.image_path.relative_to(datasets["grading"].root).as_posix()]["camera"]
    assert title.startswith(f"{camera} · RG {record.retinopathy_grade}\nweight ")
    assert "RG" not in rows[3].get_title()  # segmentation images carry no grade


@pytest.mark.slow  # a multi-task model over two splits
def test_the_figure_of_a_multitask_model_is_written(synthetic_root, tmp_path):
    model = small_model({"classification_rg": 5, "segmentation_od": 1}, experts=2)
    datasets = {"grading": GradingDataset(synthetic_root, "test", SIZE, cache_dir=tmp_path),
                "segmentation": SegmentationDataset(synthetic_root, "test", SIZE, cache_dir=tmp_path)}
    path = write_expert_images(model, datasets, "cpu", tmp_path / "plots" / "router_expert_images.png", count=2)
    assert path.read_bytes().startswith(b"\x89PNG") and not model.training


def test_region_routing_ranks_images_by_the_mean_weight_of_their_cells(datasets):
    def region_router(images, side):  # 2x2 cells per image: the left cells weigh for expert 0, the right for 1
        cells = torch.nn.functional.adaptive_avg_pool2d(images.mean(dim=1, keepdim=True), (2, 2))  # [B, 1, 2, 2]
        logits = torch.stack([cells[:, 0, :, 0], cells[:, 0, :, 1]], dim=-1).repeat_interleave(2, dim=1)
        weights = torch.softmax(5 * logits.reshape(-1, 2), dim=-1)  # [B * 4, 2], an image's cells consecutive
        task = "classification_rg" if side == "grading" else "segmentation_od"
        return {"routing": {task: Routing(weights, weights, torch.ones_like(weights, dtype=torch.bool), cells=4)}}

    picks = expert_images(region_router, datasets, "cpu", count=3, batch_size=4)
    images = torch.stack([datasets["grading"][i]["image"] for i in range(len(datasets["grading"]))])
    expected = region_router(images, "grading")["routing"]["classification_rg"].weights.view(-1, 4, 2).mean(dim=1)
    grading = picks["classification_rg"]
    assert grading.weights.shape == (len(datasets["grading"]), 2)  # one row per image, not per cell
    torch.testing.assert_close(grading.weights, expected)
    assert grading.top[1] == expected[:, 1].argsort(descending=True, stable=True)[:3].tolist()
    expert_images_figure(picks, datasets)  # every pick is an image of the dataset
