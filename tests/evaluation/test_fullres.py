"""Evaluation at the original resolution: upsampling, streaming meter, and the whole-split routine."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as sk

from codebase.data import cache, idrid
from codebase.data.cache import load_resized_image
from codebase.data.image_datasets import SegmentationDataset
from codebase.data.images import read_mask, read_size
from codebase.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from codebase.evaluation import fullres
from codebase.evaluation.fullres import (
    FullResolutionMeter,
    evaluate_full_resolution,
    full_size_masks,
    fullres_metrics,
    run_fullres_metrics,
    run_window,
    sliding_window_logits,
    upsample_probabilities,
    with_fullres,
)
from codebase.tasks import parse_tasks


def test_upsampling_is_bilinear_with_half_pixel_centres():
    probs = torch.tensor([0.2, 0.8]).view(1, 1, 1, 2)
    up = upsample_probabilities(probs, (2, 4))
    expected = torch.tensor([0.2, 0.35, 0.65, 0.8])  # source x = (x' + 0.5) / 2 - 0.5, clamped to the edge
    torch.testing.assert_close(up, expected.expand(1, 1, 2, 4))
    same = torch.rand(1, 2, 3, 5)
    assert upsample_probabilities(same, (3, 5)) is same


def assert_equal_to_sklearn(results, probs, masks, lesions):
    """probs, masks: full-size float / 0-1 arrays [N, L, H, W]."""
    for index, lesion in enumerate(lesions):
        y, p = masks[:, index].reshape(-1), probs[:, index].reshape(-1)
        predicted, values = p >= 0.5, results[lesion]
        for name, score, defined in (("iou", sk.jaccard_score, y.any() or predicted.any()),
                                     ("dice", sk.f1_score, y.any() or predicted.any()),
                                     ("sensitivity", sk.recall_score, y.any()),
                                     ("precision", sk.precision_score, predicted.any())):
            expected = score(y, predicted) if defined else math.nan  # the meter's 0/0 is NaN
            assert values[f"{name}_fullres"] == pytest.approx(expected, abs=1e-12, nan_ok=True), (lesion, name)
        if y.any():  # Histogram AUPR: within 0.005 of scikit-learn's average precision, as in test_metrics.py.
            assert abs(values["aupr_fullres"] - sk.average_precision_score(y, p)) < 0.005, lesion
        else:
            assert math.isnan(values["aupr_fullres"])


def test_meter_on_upsampled_maps_equals_sklearn_at_full_size():
    generator = torch.Generator().manual_seed(0)
    lesions = ("MA", "HE", "OD")
    masks = (torch.rand(3, 3, 64, 96, generator=generator) < torch.tensor([0.01, 0.05, 0.2]).view(1, 3, 1, 1))
    soft = F.avg_pool2d(masks.float(), 2)  # [3, 3, 32, 48] working-size evidence of the masks
    working = torch.sigmoid(6 * soft - 3 + torch.randn(soft.shape, generator=generator))
    meter = FullResolutionMeter(lesions)
    for image in range(3):  # one image at a time, as evaluation streams them
        meter.update(working[image:image + 1], masks[image:image + 1].numpy().astype(np.uint8))
    results = meter.compute()
    full = upsample_probabilities(working, (64, 96))
    assert_equal_to_sklearn(results, full.numpy(), masks.numpy(), lesions)
    assert results["mean_dice_fullres"] == pytest.approx(np.mean([results[k]["dice_fullres"] for k in lesions]))
    state = sum(tensor.numel() for tensor in meter.state_tensors())
    meter.update(working, masks.to(torch.uint8))
    assert sum(tensor.numel() for tensor in meter.state_tensors()) == state  # memory independent of images


def test_meter_refuses_mismatched_shapes_and_reports_absent_lesions():
    meter = FullResolutionMeter(("EX", "SE"))
    with pytest.raises(ValueError, match="must be \\[B, 2, h, w\\] and \\[B, 2, H, W\\]"):
        meter.update(torch.rand(1, 3, 4, 4), torch.zeros(1, 2, 8, 8))
    masks = torch.zeros(1, 2, 8, 8, dtype=torch.uint8)
    masks[0, 0, :4] = 1
    meter.update(torch.full((1, 2, 4, 4), 0.3), masks)
    results = meter.compute()
    assert math.isnan(results["SE"]["aupr_fullres"]) and results["mean_aupr_fullres"] == results["EX"]["aupr_fullres"]


def toy_model(generator):
    """A per-pixel linear model of the normalised image: 3 -> 5 lesion logits."""
    weight, bias = torch.randn(5, 3, 1, 1, generator=generator), torch.randn(5, generator=generator)
    return lambda images: F.conv2d(images, weight, bias)


def reference(records, model, working_size):
    """Full-size probabilities and masks of the test images, computed without the module under test."""
    probs, masks = [], []
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for record in records:
        width, height = read_size(record.image_path)
        image = torch.from_numpy(load_resized_image(record.image_path, working_size)).permute(2, 0, 1) / 255.0
        logits = model(((image - mean) / std).unsqueeze(0))
        probs.append(F.interpolate(torch.sigmoid(logits), size=(height, width), mode="bilinear").numpy())
        masks.append(np.stack([read_mask(p) if p else np.zeros((height, width), np.uint8)
                               for p in record.mask_paths.values()])[None])
    return np.concatenate(probs), np.concatenate(masks)


def test_whole_split_at_full_resolution_equals_sklearn(synthetic_root, tmp_path):
    model = toy_model(torch.Generator().manual_seed(1))
    dataset = SegmentationDataset(synthetic_root, "test", (64, 96), cache_dir=tmp_path)
    results = evaluate_full_resolution(model, dataset)
    probs, masks = reference(dataset.records, model, (64, 96))
    assert ((probs >= 0.5) & (masks == 1)).any() and ((probs >= 0.5) & (masks == 0)).any()  # not degenerate
    assert masks.shape[-2:] == (128, 192)  # scored against the original masks, not the working size
    assert_equal_to_sklearn(results, probs, masks, idrid.LESIONS)
    # The same split from its data root, at a working size given here; sliding windows and flip TTA
    # of a per-pixel model change nothing.
    again = evaluate_full_resolution(model, synthetic_root, split="test", image_size=(64, 96), window=(32, 32),
                                     flip_tta=True)
    for lesion in idrid.LESIONS:
        for name, value in results[lesion].items():
            assert again[lesion][name] == pytest.approx(value, abs=1e-6, nan_ok=True)


def test_absent_mask_is_all_negative(synthetic_root):
    record = idrid.segmentation_records(synthetic_root, "test")[0]
    without_se = idrid.SegmentationRecord(record.name, record.image_path, {**record.mask_paths, "SE": None})
    masks = full_size_masks(without_se)
    assert masks.shape == (5, 128, 192) and masks[idrid.LESIONS.index("SE")].sum() == 0
    assert masks[idrid.LESIONS.index("OD")].sum() > 0


def test_wrong_number_of_channels_is_named(synthetic_root):
    with pytest.raises(ValueError, match="returned 2 channels .* expected 5"):
        evaluate_full_resolution(lambda images: images[:, :2], synthetic_root, image_size=(32, 48))
    with pytest.raises(ValueError, match="SegmentationDataset, a data root, or SegmentationRecords"):
        evaluate_full_resolution(lambda images: images, [1, 2])


def test_cached_masks_decode_once_and_score_the_same(synthetic_root, tmp_path, monkeypatch):
    model = toy_model(torch.Generator().manual_seed(2))
    first = evaluate_full_resolution(model, synthetic_root, image_size=(64, 96), cache_dir=tmp_path, cache_masks=True)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a source file on a second evaluation")

    for module, name in ((cache, "read_image"), (cache, "read_mask_image"), (fullres, "read_mask")):
        monkeypatch.setattr(module, name, no_decoding)  # every place a source file is decoded
    second = evaluate_full_resolution(model, synthetic_root, image_size=(64, 96), cache_dir=tmp_path, cache_masks=True)
    assert str(second) == str(first)  # equal, NaN included
    with pytest.raises(AssertionError, match="decoded a source file"):
        evaluate_full_resolution(model, synthetic_root, image_size=(64, 96), cache_dir=tmp_path)  # masks uncached


def test_sliding_window_logits_are_the_blended_probabilities_as_logits():
    model = toy_model(torch.Generator().manual_seed(2))  # per pixel: windows change nothing
    images = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    logits = sliding_window_logits(model, (24, 24), overlap=0.5)(images)
    assert logits.shape == (2, 5, 40, 56)
    torch.testing.assert_close(torch.sigmoid(logits), torch.sigmoid(model(images)), atol=1e-5, rtol=0)


def test_fullres_metrics_equal_the_whole_split_routine_and_merge_beside_the_resized_ones(synthetic_root):
    model = toy_model(torch.Generator().manual_seed(1))
    records = idrid.segmentation_records(synthetic_root, "test")
    expected = evaluate_full_resolution(model, records, image_size=(64, 96))
    results = fullres_metrics(model, synthetic_root, "test", image_size=(64, 96))
    for lesion in idrid.LESIONS:
        assert results[lesion] == pytest.approx(expected[lesion], nan_ok=True)
    subset = fullres_metrics(lambda images: model(images)[:, 3:4], records, lesions=("SE",), image_size=(64, 96))
    assert set(subset) == {"SE", "mean_iou_fullres", "mean_dice_fullres", "mean_aupr_fullres"}
    assert subset["SE"] == pytest.approx(expected["SE"], nan_ok=True)

    resized = {"MA": {"aupr": 0.1}, "mean_aupr": 0.1, "resolution": "resized 64x96"}
    merged = with_fullres(resized, results)
    assert merged["MA"] == {"aupr": 0.1, **results["MA"]} and merged["mean_aupr"] == 0.1
    assert merged["mean_aupr_fullres"] == results["mean_aupr_fullres"] and merged["resolution"] == "resized 64x96"
    assert "aupr_fullres" not in resized["MA"]  # the resized metrics are left as they were


class SavedRun:
    """What run_fullres_metrics needs of inference.runs.TrainedRun."""

    def __init__(self, config, logits_of, keys=idrid.LESIONS):
        self.config, self.logits_of, self.keys = config, logits_of, keys

    def tasks(self, side):
        return parse_tasks({f"segmentation_{key.lower()}": 1 for key in self.keys})

    def predict(self, images, side="segmentation"):
        logits = self.logits_of(images)
        return {"logits": {f"segmentation_{key.lower()}": logits[:, i:i + 1] for i, key in enumerate(self.keys)}}


def test_a_saved_run_is_scored_at_its_own_size_and_window(synthetic_root):
    model = toy_model(torch.Generator().manual_seed(4))
    resized = {"data": {"image_size": [64, 96]}, "train": {"threshold": 0.5, "amp": "off"}}
    assert run_window(resized) == ((64, 96), None, 0.25)
    results = run_fullres_metrics(SavedRun(resized, model), synthetic_root)
    expected = evaluate_full_resolution(model, synthetic_root, image_size=(64, 96))
    assert results["OD"] == pytest.approx(expected["OD"], nan_ok=True)
    patched = {"data": {"segmentation_size": [64, 96], "patches": {"enabled": True, "working_size": None,
                                                                   "crop_size": [64, 64], "overlap": 0.5}},
               "train": {"amp": "off"}}
    assert run_window(patched) == (None, (64, 64), 0.5)
    results = run_fullres_metrics(SavedRun(patched, model), synthetic_root)
    expected = evaluate_full_resolution(model, synthetic_root, window=(64, 64), overlap=0.5)  # original size
    assert results["EX"] == pytest.approx(expected["EX"], abs=1e-6, nan_ok=True)
