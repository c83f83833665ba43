import math

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from codebase.evaluation.metrics import (
    ClassificationMeter,
    JointAccuracyMeter,
    SegmentationMeter,
)


def no_host_sync(monkeypatch):
    """Make every tensor -> Python conversion fail, to prove update() never waits for the device."""
    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation in update()")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize("seed, num_classes", [(0, 5), (1, 3), (2, 2)])
def test_classification_meter_equals_sklearn_and_streams(seed, num_classes):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (300,), generator=generator)
    logits = torch.randn(300, num_classes, generator=generator) + 1.5 * torch.nn.functional.one_hot(targets)
    predictions = logits.argmax(dim=1)
    streamed, one_shot = ClassificationMeter(num_classes), ClassificationMeter(num_classes)
    for start in range(0, 300, 64):
        streamed.update(logits[start:start + 64], targets[start:start + 64])
    one_shot.update(predictions, targets)
    results = streamed.compute()
    assert results == one_shot.compute()
    y, p, labels = targets.numpy(), predictions.numpy(), list(range(num_classes))
    assert results["accuracy"] == pytest.approx(sk.accuracy_score(y, p))
    assert results["kappa"] == pytest.approx(sk.cohen_kappa_score(y, p, weights="quadratic"))
    assert results["confusion"] == sk.confusion_matrix(y, p, labels=labels).tolist()
    assert results["recall"] == pytest.approx(sk.recall_score(y, p, labels=labels, average=None).tolist())


def test_classification_meter_degenerate_cases():
    meter = ClassificationMeter(5)
    meter.update(torch.full((10,), 2), torch.full((10,), 2))  # all one class, all right
    results = meter.compute()
    assert results["kappa"] == 1.0 and results["accuracy"] == 1.0
    assert math.isnan(results["recall"][0]) and results["recall"][2] == 1.0  # class 0 never occurs
    meter.reset()
    predictions, targets = torch.tensor([0, 1, 2, 2]), torch.full((4,), 2)  # one true class, varied guesses
    meter.update(predictions, targets)
    assert meter.compute()["kappa"] == pytest.approx(sk.cohen_kappa_score(targets, predictions, weights="quadratic"))
    meter.update(torch.tensor([1]), torch.tensor([7]))
    with pytest.raises(ValueError, match="1 targets or predictions were outside 0..4"):
        meter.compute()
    with pytest.raises(ValueError, match="before any update"):
        ClassificationMeter(3).compute()


def test_joint_accuracy_counts_images_with_both_grades_right():
    meter = JointAccuracyMeter()
    rg, mer = torch.tensor([0, 1, 2, 3, 4, 2]), torch.tensor([0, 1, 2, 0, 1, 2])
    rg_predictions = torch.tensor([0, 1, 2, 0, 4, 2])  # wrong on image 3
    mer_logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 0, 0, 2]), 3).float()  # wrong on 2 and 4
    meter.update(rg_predictions, mer_logits, rg, mer)
    assert meter.compute() == pytest.approx(3 / 6)
    rg_meter, mer_meter = ClassificationMeter(5), ClassificationMeter(3)
    rg_meter.update(rg_predictions, rg)
    mer_meter.update(mer_logits, mer)
    assert rg_meter.compute()["accuracy"] == pytest.approx(5 / 6)
    assert mer_meter.compute()["accuracy"] == pytest.approx(4 / 6)


def test_meters_state_sums_like_a_distributed_run_and_resets(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    rg, mer = torch.randint(0, 5, (40,), generator=generator), torch.randint(0, 3, (40,), generator=generator)
    rg_logits, mer_logits = torch.randn(40, 5, generator=generator), torch.randn(40, 3, generator=generator)
    probs = torch.rand(4, 5, 16, 16, generator=generator)
    masks = (torch.rand(4, 5, 16, 16, generator=generator) > 0.8).to(torch.uint8)
    def meters():
        return [ClassificationMeter(5), JointAccuracyMeter(), SegmentationMeter(bins=1000)]

    def update(meter_list, part):
        meter_list[0].update(rg_logits[part], rg[part])
        meter_list[1].update(rg_logits[part], mer_logits[part], rg[part], mer[part])
        meter_list[2].update(probs[part], masks[part])

    whole, ranks = meters(), [meters() for _ in range(2)]
    with monkeypatch.context() as patch:
        no_host_sync(patch)
        update(whole, slice(None))
        for rank, rank_meters in enumerate(ranks):  # each rank sees half of the data
            update(rank_meters, slice(rank, None, 2))
    for kind in range(3):
        for total, other in zip(ranks[0][kind].state_tensors(), ranks[1][kind].state_tensors()):
            total += other  # what all_reduce(SUM) does in place
        assert ranks[0][kind].compute() == whole[kind].compute()
        whole[kind].reset()
        assert all(int(tensor.sum()) == 0 for tensor in whole[kind].state_tensors())


def segmentation_batch(generator, foreground, shape=(3, 5, 64, 64)):
    """Masks with the given foreground fraction and probabilities from an imperfect model."""
    masks = torch.rand(shape, generator=generator) < foreground
    logits = torch.where(masks, 1.0, -4.0) + 2.5 * torch.randn(shape, generator=generator)
    return torch.sigmoid(logits), masks.to(torch.uint8)


def test_segmentation_meter_threshold_metrics_equal_sklearn():
    probs, masks = segmentation_batch(torch.Generator().manual_seed(0), foreground=0.05)
    meter = SegmentationMeter()
    meter.update(probs, masks)
    results = meter.compute()
    for index, lesion in enumerate(("MA", "HE", "EX", "SE", "OD")):
        y, p = masks[:, index].flatten().numpy(), (probs[:, index] >= 0.5).flatten().numpy()
        assert results[lesion]["iou"] == pytest.approx(sk.jaccard_score(y, p))
        assert results[lesion]["dice"] == pytest.approx(sk.f1_score(y, p))
        assert results[lesion]["sensitivity"] == pytest.approx(sk.recall_score(y, p))
        assert results[lesion]["precision"] == pytest.approx(sk.precision_score(y, p))
    assert results["mean_dice"] == pytest.approx(np.mean([results[lesion]["dice"] for lesion in meter.lesions]))


def test_segmentation_threshold_is_inclusive():
    meter = SegmentationMeter(lesions=("OD",), threshold=0.5)
    meter.update(torch.tensor([0.5, 0.49]).view(1, 1, 1, 2), torch.tensor([1, 1]).view(1, 1, 1, 2))
    assert meter.compute()["OD"]["sensitivity"] == 0.5


def aupr_cases():
    generator = torch.Generator().manual_seed(7)
    shape = (4, 1, 128, 128)
    yield "uniform random", torch.rand(shape, generator=generator), torch.rand(shape, generator=generator) > 0.7
    for foreground in (0.01, 0.0005):  # haemorrhage-like and microaneurysm-like
        probs, masks = segmentation_batch(generator, foreground, shape)
        yield f"imbalanced {foreground}", probs, masks
    # A confident model: positives and some false positives at p > 0.9999, where uniform bins in p would tie.
    masks = torch.rand(shape, generator=generator) < 0.002
    confident_wrong = torch.rand(shape, generator=generator) < 0.002
    logits = torch.where(masks, 13.0, torch.where(confident_wrong, 11.0, -8.0)) + 2 * torch.randn(shape, generator=generator)
    yield "confident", torch.sigmoid(logits), masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_streaming_aupr_is_within_0_005_of_sklearn(dtype):
    for name, probs, masks in aupr_cases():
        probs = probs.to(dtype)
        meter = SegmentationMeter(lesions=("MA",))
        for image in range(probs.shape[0]):
            meter.update(probs[image:image + 1], masks[image:image + 1])
        expected = sk.average_precision_score(masks.flatten().numpy(), probs.float().flatten().numpy())
        assert abs(meter.compute()["MA"]["aupr"] - expected) < 0.005, name


def test_streaming_equals_one_shot():
    probs, masks = segmentation_batch(torch.Generator().manual_seed(1), foreground=0.02, shape=(6, 5, 32, 48))
    streamed, one_shot = SegmentationMeter(), SegmentationMeter()
    for start in range(0, 6, 2):
        streamed.update(probs[start:start + 2].half(), masks[start:start + 2])
    one_shot.update(probs.half(), masks)
    for a, b in zip(streamed.state_tensors(), one_shot.state_tensors()):
        assert torch.equal(a, b)
    assert streamed.compute() == one_shot.compute()


def test_pr_curve_matches_sklearn_on_distinct_scores():
    generator = torch.Generator().manual_seed(2)
    levels = torch.linspace(0.02, 0.98, 25)  # each level in its own bin
    probs = levels[torch.randint(0, 25, (1, 1, 40, 40), generator=generator)]
    masks = (torch.rand(1, 1, 40, 40, generator=generator) < probs).to(torch.uint8)
    meter = SegmentationMeter(lesions=("EX",))
    meter.update(probs, masks)
    precision, recall = meter.pr_curve("EX")
    expected_precision, expected_recall, _ = sk.precision_recall_curve(masks.flatten().numpy(), probs.flatten().numpy())
    # sklearn lists thresholds ascending and appends the point (recall 0, precision 1).
    np.testing.assert_allclose(precision, expected_precision[-2::-1])
    np.testing.assert_allclose(recall, expected_recall[-2::-1])
    assert recall[-1] == 1.0


def test_lesion_absent_from_the_split():
    probs = torch.full((2, 2, 8, 8), 0.1)
    masks = torch.zeros(2, 2, 8, 8, dtype=torch.uint8)
    masks[:, 0, :4] = 1
    probs[:, 0, :4] = 0.9
    meter = SegmentationMeter(lesions=("HE", "SE"))
    meter.update(probs, masks)
    results = meter.compute()
    assert results["HE"]["aupr"] == 1.0 and results["HE"]["iou"] == 1.0
    se = results["SE"]
    assert math.isnan(se["aupr"]) and math.isnan(se["sensitivity"]) and math.isnan(se["iou"])
    assert results["mean_aupr"] == 1.0 and results["mean_iou"] == 1.0  # NaN skipped
    assert [array.size for array in meter.pr_curve("SE")] == [0, 0]
    with pytest.raises(ValueError, match="must both be \\[B, 2, H, W\\]"):
        meter.update(probs[:, :1], masks[:, :1])
