"""Bootstrap resamples, intervals and weighted metrics against direct numpy / scikit-learn computations."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, cohen_kappa_score, confusion_matrix

from codebase.evaluation.metrics import ClassificationMeter, SegmentationMeter
from experiments.bootstrap import (
    accuracy,
    average_precision,
    confusion_matrices,
    dice,
    percentile_interval,
    quadratic_kappa,
    resample_indices,
    resample_weights,
    with_full_set,
)


def test_resamples_are_seeded_draws_with_replacement():
    indices = resample_indices(7, 4, seed=5)
    generator = np.random.default_rng(5)  # the same draws, one resample at a time
    direct = np.stack([generator.integers(0, 7, size=7) for _ in range(4)])
    np.testing.assert_array_equal(indices, direct)
    np.testing.assert_array_equal(indices, resample_indices(7, 4, seed=5))
    assert not np.array_equal(indices, resample_indices(7, 4, seed=6))
    weights = resample_weights(indices, 7)
    np.testing.assert_array_equal(weights, np.stack([np.bincount(row, minlength=7) for row in indices]))
    full = with_full_set(weights)
    np.testing.assert_array_equal(full[0], np.ones(7))
    np.testing.assert_array_equal(full[1:], weights)


def test_interval_of_the_mean_matches_a_direct_loop():
    data = np.random.default_rng(0).normal(size=30)
    indices = resample_indices(30, 500, seed=11)
    weights = resample_weights(indices, 30)
    vectorised = weights @ data / 30
    direct = np.array([data[row].mean() for row in indices])
    np.testing.assert_allclose(vectorised, direct, rtol=0, atol=1e-12)
    low, high = percentile_interval(vectorised)
    assert (low, high) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])), abs=1e-12)
    assert low < data.mean() < high
    # The same seed gives the same interval; another seed another one.
    again = resample_weights(resample_indices(30, 500, seed=11), 30) @ data / 30
    assert percentile_interval(again) == (low, high)
    other = resample_weights(resample_indices(30, 500, seed=12), 30) @ data / 30
    assert percentile_interval(other) != (low, high)


def test_percentile_interval_known_values():
    assert percentile_interval(np.arange(100.0)) == pytest.approx((2.475, 96.525))  # linear interpolation
    assert percentile_interval(np.arange(100.0), level=0.5) == pytest.approx((24.75, 74.25))
    assert percentile_interval([np.nan, 1.0, 1.0, np.nan]) == (1.0, 1.0)  # undefined resamples are left out
    assert all(math.isnan(v) for v in percentile_interval([np.nan, np.nan]))


def test_weighted_confusion_kappa_and_accuracy_match_sklearn_on_the_resampled_images():
    rng = np.random.default_rng(3)
    true, predicted = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    predicted[:20] = true[:20]
    indices = resample_indices(40, 6, seed=1)
    confusion = confusion_matrices(true, predicted, 5, with_full_set(resample_weights(indices, 40)))
    kappa, acc = quadratic_kappa(confusion), accuracy(confusion)
    for row, sample in enumerate([np.arange(40)] + list(indices)):
        np.testing.assert_array_equal(confusion[row], confusion_matrix(true[sample], predicted[sample], labels=range(5)))
        assert kappa[row] == pytest.approx(cohen_kappa_score(true[sample], predicted[sample], weights="quadratic"))
        assert acc[row] == pytest.approx(np.mean(true[sample] == predicted[sample]))
    meter = ClassificationMeter(5)
    meter.update(torch.from_numpy(predicted), torch.from_numpy(true))
    assert kappa[0] == pytest.approx(meter.compute()["kappa"])


def test_kappa_of_one_class_all_right_is_one_as_in_codebase_metrics():
    confusion = np.zeros((1, 3, 3))
    confusion[0, 1, 1] = 4
    assert quadratic_kappa(confusion)[0] == 1.0
    meter = ClassificationMeter(3)
    meter.update(torch.ones(4, dtype=torch.long), torch.ones(4, dtype=torch.long))
    assert meter.compute()["kappa"] == 1.0


def test_dice_hand_values():
    counts = np.array([[3, 1, 2], [0, 0, 0], [0, 4, 0]], dtype=float)  # TP, FP, FN
    values = dice(counts)
    assert values[0] == pytest.approx(6 / 9)
    assert math.isnan(values[1])
    assert values[2] == 0.0


def test_average_precision_of_histograms_matches_sklearn():
    rng = np.random.default_rng(4)
    bins = 50
    images = [(rng.integers(0, bins, 200), rng.random(200) < 0.2) for _ in range(5)]  # (score bin, positive)
    histograms = np.zeros((5, 2, bins))
    for image, (scores, positive) in enumerate(images):
        np.add.at(histograms[image], (positive.astype(int), scores), 1)
    indices = resample_indices(5, 4, seed=2)
    weights = with_full_set(resample_weights(indices, 5))
    ap = average_precision((weights @ histograms.reshape(5, -1)).reshape(-1, 2, bins))
    for row, sample in enumerate([np.arange(5)] + list(indices)):
        scores = np.concatenate([images[i][0] for i in sample])
        positive = np.concatenate([images[i][1] for i in sample])
        assert ap[row] == pytest.approx(average_precision_score(positive, scores), abs=1e-12)
    assert math.isnan(average_precision(np.array([[[5.0, 1.0], [0.0, 0.0]]]))[0])  # no positive pixel


def test_average_precision_equals_the_segmentation_meter():
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 1, 16, 16, generator=generator)
    masks = (torch.rand(2, 1, 16, 16, generator=generator) < probs).to(torch.uint8)
    meter = SegmentationMeter(("EX",))
    meter.update(probs, masks)
    assert average_precision(meter.histogram[0].double().numpy()) == pytest.approx(meter.aupr("EX"), abs=1e-12)
