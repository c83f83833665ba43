"""Preview images of a few validation samples with predicted and true lesions and grades."""
import numpy as np
import torch

from codebase.data.idrid import LESIONS
from codebase.data.image_datasets import GradingDataset, SegmentationDataset
from codebase.evaluation.previews import LINE_HEIGHT, OTHER_COLOUR, PredictionPreview
from codebase.evaluation.visualize import LESION_COLOURS, displayable, overlay
from codebase.model import MultiTaskModel, predict
from codebase.tasks import parse_tasks

TASKS = parse_tasks({"classification_rg": 5, "classification_mer": 3, "segmentation_ex": 1, "segmentation_red": 1})


def sample(height=8, width=10, rg=None):
    """A normalised image with an EX mask over its top-left 2x3 pixels (and a grade when given)."""
    masks = torch.zeros(5, height, width, dtype=torch.uint8)
    masks[LESIONS.index("EX"), :2, :3] = 1
    item = {"image": torch.randn(3, height, width), "masks": masks, "name": "IDRiD_07"}
    if rg is not None:
        item["rg"] = torch.tensor(rg)
    return item


def fixed_predict(model, images):
    """EX predicted over the left 3 of 5 columns at half resolution, nothing "red"; RG 2, MER 1."""
    batch, _, height, width = images.shape
    ex = torch.full((batch, 1, height // 2, width // 2), -9.0)  # half resolution: the preview upsamples
    ex[..., :3] = 9.0
    rg = torch.tensor([[0.0, 0.1, 3.0, 0.2, 0.0]]).expand(batch, -1)
    mer = torch.tensor([[0.0, 2.0, 1.0]]).expand(batch, -1)
    return {"logits": {"segmentation_ex": ex, "segmentation_red": torch.full((batch, 1, height, width), -9.0),
                       "classification_rg": rg, "classification_mer": mer}}


def test_panels_show_the_image_the_predicted_and_the_true_lesions_and_grades():
    model = torch.nn.Linear(1, 1)
    preview = PredictionPreview(model, fixed_predict, [], TASKS, torch.device("cpu"))
    item = sample(rg=3)
    panels, grades = preview.render(item)
    assert [label for label, _ in panels] == ["image", "predicted", "true"]
    picture = displayable(item["image"])
    np.testing.assert_allclose(panels[0][1], picture)
    predicted = np.zeros((8, 10), bool)
    predicted[:, :6] = True  # bilinear upsampling of columns 0-2 of 5 (+9 | -9) to 10: positive up to column 5
    colours = {"EX": LESION_COLOURS["EX"], "RED": OTHER_COLOUR}
    np.testing.assert_allclose(panels[1][1], overlay(picture, {"EX": predicted}, colours=colours))
    np.testing.assert_allclose(panels[2][1], overlay(picture, {"EX": item["masks"][LESIONS.index("EX")].numpy()},
                                                     colours=colours))
    assert grades == ["RG 2 (true 3)", "MER 1"]  # the sample has no MER grade


def test_a_sample_without_masks_gets_no_true_panel_and_the_picture_has_a_caption():
    preview = PredictionPreview(torch.nn.Linear(1, 1), fixed_predict, [], TASKS, torch.device("cpu"))
    item = {"image": torch.randn(3, 8, 10), "rg": torch.tensor(2), "mer": torch.tensor(0)}
    panels, grades = preview.render(item)
    assert [label for label, _ in panels] == ["image", "predicted"]
    assert grades == ["RG 2 (true 2)", "MER 1 (true 0)"]
    picture = preview.draw(item)
    assert picture.dtype == np.uint8 and picture.shape[0] == 8 + 2 * LINE_HEIGHT + 4 and picture.shape[1] >= 20
    drawn = np.concatenate([panel for _, panel in panels], axis=1)
    np.testing.assert_array_equal(picture[:8, :20], (drawn * 255).round().astype(np.uint8))
    assert picture[8:].any(), "the caption is written below the panels"
    narrow = preview.draw({"image": torch.randn(3, 8, 4), "rg": torch.tensor(2), "mer": torch.tensor(0)})
    assert narrow.shape[1] > 8 and narrow[:8, 8:].max() == 0, "the strip is widened to the caption"


def test_preview_of_a_real_model_on_validation_datasets(synthetic_root):
    torch.manual_seed(0)
    model = MultiTaskModel({task.name: task.outputs for task in TASKS}, "resnet18", 2, pretrained="none",
                           aspp_channels=16, decoder_channels=16, head_hidden=16, gate_hidden=16).train()
    grading = GradingDataset(synthetic_root, "test", (64, 96))
    segmentation = SegmentationDataset(synthetic_root, "test", (64, 80))
    preview = PredictionPreview(model, predict, [grading, segmentation], model.tasks, torch.device("cpu"), count=3)
    images = preview(1)
    assert model.training, "the model's mode is restored"
    assert len(images) == 3  # one grading sample, then two segmentation samples
    shapes = [image.shape for image in images.values()]
    assert shapes[0] == (64 + 2 * LINE_HEIGHT + 4, 2 * 96, 3)  # image | predicted (a grading image has no masks)
    assert shapes[1] == shapes[2] == (64 + 2 * LINE_HEIGHT + 4, 3 * 80, 3)  # image | predicted | true
    # (captions are narrower than these panels)
    assert all(image.dtype == np.uint8 for image in images.values())
    assert list(images)[1] == f"1_{segmentation[0]['name']}"
