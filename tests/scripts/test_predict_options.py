"""predict.py's options: which weights, the fundus check and --strict, sliding-window lesion maps,
and an output place that cannot be a folder."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

import compare_models
import predict
from codebase.data.idrid import grading_records, segmentation_records
from inference.predictor import (
    SegmentationPlan,
    load_input,
    segmentation_plan,
    sliding_probabilities,
)
from inference.runs import open_run


@pytest.fixture(scope="module")
def fundus_and_photo(synthetic_root, tmp_path_factory):
    """A folder with a synthetic fundus JPEG and a scikit-learn sample photograph (a building), downscaled."""
    folder = tmp_path_factory.mktemp("fundus_and_photo")
    Image.open(grading_records(synthetic_root, "test")[0].image_path).convert("RGB").save(folder / "fundus.jpg")
    Image.fromarray(load_sample_images().images[0]).resize((192, 128)).save(folder / "photo.jpg", quality=90)
    return folder


def predictions(folder):
    return json.loads((folder / "predictions.json").read_text())


# ---------------------------------------------------------------- output place (no trained run needed)
def test_out_naming_a_file_is_one_error_and_exit_2_before_any_prediction(tmp_path, capsys, synthetic_root):
    image = grading_records(synthetic_root, "test")[0].image_path
    existing = tmp_path / "results.txt"
    existing.write_text("not a folder")
    for out in (existing, existing / "inside"):
        assert predict.main(["--run", str(tmp_path / "no_run"), str(image), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(existing) in err[0] and "is a file" in err[0]
    assert existing.read_text() == "not a folder"
    assert compare_models.main(["--runs", str(tmp_path / "no_run"), "--out", str(existing)]) == 2
    assert str(existing) in capsys.readouterr().err


# ---------------------------------------------------------------- sliding-window plan rules (no trained run needed)
def stub_run(segmentation_size, working_size=None):
    data = {"working_size": list(working_size)} if working_size else {}
    return SimpleNamespace(input_sizes=lambda: {"segmentation": segmentation_size}, config={"data": data})


def test_segmentation_plan_rules():
    whole_image_run = stub_run((64, 96))
    assert segmentation_plan(whole_image_run, (127, 500)).mode == "whole"  # under 2x in height
    plan = segmentation_plan(whole_image_run, (128, 192))
    assert (plan.mode, plan.working_size, plan.window) == ("sliding", (128, 192), (64, 96))
    assert segmentation_plan(whole_image_run, (1000, 1000), scale=3).working_size == (192, 288)
    assert segmentation_plan(whole_image_run, (1000, 1000), sliding="off").mode == "whole"
    assert segmentation_plan(whole_image_run, (50, 50), sliding=(200, 300)).working_size == (200, 300)
    assert segmentation_plan(whole_image_run, (64, 96), flip_tta=True).mode == "sliding"  # TTA goes through windows
    patch_run = stub_run((64, 96), working_size=(256, 384))
    assert segmentation_plan(patch_run, (100, 100)).working_size == (256, 384)  # the scale its patches had


# ---------------------------------------------------------------- trained tiny runs
@pytest.mark.slow
def test_weights_best_and_last(tiny_runs, tmp_path, fundus_and_photo):
    """--weights best loads best.pth (here: every weight zero, so every class is equally likely), last model.pth."""
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["classifier"], run)
    state = torch.load(run / "model.pth", weights_only=True)
    torch.save({key: torch.zeros_like(value) for key, value in state.items()}, run / "best.pth")
    image = str(fundus_and_photo / "fundus.jpg")
    for weights, expected in (("best", "best.pth"), ("last", "model.pth")):
        assert predict.main(["--run", str(run), image, "--out", str(tmp_path / weights), "--device", "cpu",
                             "--weights", weights]) == 0
        results = predictions(tmp_path / weights)
        assert results["weights"] == expected
        uniform = np.allclose(results["images"][0]["grades"]["rg"]["probabilities"], 0.2, atol=1e-4)
        assert uniform == (weights == "best")


@pytest.mark.slow
def test_fundus_check_is_recorded_and_strict_skips_flagged_inputs(tiny_runs, fundus_and_photo, tmp_path, capsys):
    assert predict.main(["--run", str(tiny_runs["classifier"]), str(fundus_and_photo), "--out", str(tmp_path / "a"),
                         "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    records = {r["input"].rsplit("/", 1)[-1]: r for r in predictions(tmp_path / "a")["images"]}
    assert records["fundus.jpg"]["fundus_check"] == {"is_fundus": True, "quality": "good", "reasons": []}
    photo = records["photo.jpg"]["fundus_check"]
    assert photo["is_fundus"] is False and photo["quality"] == "poor" and photo["reasons"]
    assert "fundus check: fundus, quality good" in printed
    assert "fundus check: NOT a fundus photograph" in printed
    assert records["photo.jpg"]["grades"]  # still predicted without --strict

    assert predict.main(["--run", str(tiny_runs["classifier"]), str(fundus_and_photo), "--out", str(tmp_path / "b"),
                         "--device", "cpu", "--strict"]) == 1
    err = capsys.readouterr().err
    results = predictions(tmp_path / "b")
    assert [r["input"].rsplit("/", 1)[-1] for r in results["images"]] == ["fundus.jpg"]
    [failed] = results["failed"]
    assert failed["input"].endswith("photo.jpg") and "--strict" in failed["error"]
    assert photo["reasons"][0] in failed["error"] and "photo.jpg" in err
    assert not (tmp_path / "b" / "photo").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["segmentation", "multitask"])
def test_sliding_window_masks_are_at_the_inputs_size(kind, tiny_runs, synthetic_root, tmp_path):
    """An input over twice the trained segmentation size is tiled at twice that size; masks come back at the input's."""
    source = segmentation_records(synthetic_root, "test")[0].image_path
    Image.open(source).convert("RGB").resize((301, 203)).save(tmp_path / "large.png")
    assert predict.main(["--run", str(tiny_runs[kind]), str(tmp_path / "large.png"), "--out", str(tmp_path / "out"),
                         "--device", "cpu", "--overlap", "0.5"]) == 0
    [record] = predictions(tmp_path / "out")["images"]
    window = open_run(tiny_runs[kind]).input_sizes()["segmentation"]
    assert record["segmentation"] == {"mode": "sliding", "working_size": [2 * window[0], 2 * window[1]],
                                      "window": list(window), "overlap": 0.5, "flip_tta": False}
    assert record["seconds"] > 0
    for lesion, area in record["lesions"].items():
        mask = np.asarray(Image.open(tmp_path / "out" / "large" / f"mask_{lesion}.png"))
        assert mask.shape == (203, 301) and area["pixels"] == int((mask == 255).sum())
    if kind == "multitask":
        assert set(record["grades"]) == {"rg", "mer"}
        lesion_tasks = [task for task in record["experts"] if task.startswith("segmentation")]
        assert lesion_tasks and all(record["experts"][task]["windows"] >= 4 for task in lesion_tasks)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["segmentation", "multitask"])
def test_sliding_window_over_one_window_equals_the_whole_image_forward(kind, tiny_runs, synthetic_root):
    run = open_run(tiny_runs[kind])
    window = run.input_sizes()["segmentation"]
    image = load_input(segmentation_records(synthetic_root, "test")[0].image_path, window)  # [1, 3, h, w]
    probabilities, routings = sliding_probabilities(run, image, SegmentationPlan("sliding", window, window))
    with torch.no_grad():
        logits = run.predict(image, side="segmentation")["logits"]
    whole = torch.cat([torch.sigmoid(logits[task.name]) for task in run.tasks("segmentation")], dim=1)
    assert probabilities.shape == whole.shape
    torch.testing.assert_close(probabilities, whole, atol=1e-5, rtol=1e-4)
    assert len(routings) == 1
