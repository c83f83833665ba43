"""Bootstrap over test images: resamples, percentile intervals, and metrics of weighted image sets.

A resample draws n test images with replacement; it is held as the number of times each image
was drawn (weights [R, n]), so a metric accumulated over images (a confusion matrix, pixel
counts, probability histograms) is the weighted sum of per-image records. Row 0 of the weights
built by `with_full_set` is the test set itself (every image once), rows 1.. the resamples.

Conventions follow codebase.evaluation.metrics: quadratic kappa is 1 when it is 0/0 (all one class, all
right); Dice and AUPR are NaN when undefined (no lesion pixel predicted or present; no lesion
pixel present). Intervals drop resamples where the statistic is NaN.
"""
import numpy as np


def resample_indices(n, resamples, seed):
    """int64 [resamples, n]: image indices drawn with replacement by numpy's default_rng(seed)."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need at least one image and one resample, got n={n}, resamples={resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def resample_weights(indices, n):
    """[R, n] indices -> [R, n] float64 counts: how often each image is in each resample."""
    weights = np.zeros((indices.shape[0], n))
    np.add.at(weights, (np.arange(indices.shape[0])[:, None], indices), 1.0)
    return weights


def with_full_set(weights):
    """Prepend the row of the test set itself (every image once): [R, n] -> [R + 1, n]."""
    return np.vstack([np.ones((1, weights.shape[1])), weights])


def percentile_interval(values, level=0.95):
    """(low, high) percentile interval of the finite values (numpy's linear percentile); NaNs when none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def confusion_matrices(true, predicted, classes, weights):
    """Per row of weights [R, n]: the confusion matrix of (true, predicted) [n] -> [R, classes, classes]."""
    cells = np.asarray(true) * classes + np.asarray(predicted)  # [n]
    one_hot = np.zeros((cells.size, classes * classes))
    one_hot[np.arange(cells.size), cells] = 1.0
    return (weights @ one_hot).reshape(-1, classes, classes)


def accuracy(confusion):
    """[..., C, C] -> [...] share of the diagonal."""
    return np.trace(confusion, axis1=-2, axis2=-1) / confusion.sum(axis=(-2, -1))


def quadratic_kappa(confusion):
    """[..., C, C] (rows true, columns predicted) -> [...] quadratic weighted Cohen's kappa."""
    classes = np.arange(confusion.shape[-1])
    penalty = (classes[:, None] - classes[None, :]) ** 2.0  # [C, C]
    total = confusion.sum(axis=(-2, -1))
    expected = confusion.sum(axis=-1)[..., :, None] * confusion.sum(axis=-2)[..., None, :] / total[..., None, None]
    chance = (penalty * expected).sum(axis=(-2, -1))
    observed = (penalty * confusion).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(chance > 0, 1.0 - observed / np.where(chance > 0, chance, 1.0), 1.0)


def dice(counts):
    """[..., 3] (true positive, false positive, false negative pixels) -> [...] Dice; NaN when 0/0."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), np.nan)


def average_precision(histogram):
    """[..., 2, bins] (negatives, positives per probability bin, ascending) -> [...] AUPR.

    As scikit-learn's average_precision_score with each bin one threshold: sum over thresholds,
    descending, of (recall gain) x precision. NaN where there is no positive pixel.
    """
    negatives, positives = histogram[..., 0, ::-1], histogram[..., 1, ::-1]  # descending thresholds
    true_positives = np.cumsum(positives, axis=-1)
    predicted = true_positives + np.cumsum(negatives, axis=-1)
    total = true_positives[..., -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, true_positives / np.where(predicted > 0, predicted, 1), 0.0)
        ap = (positives * precision).sum(axis=-1) / total[..., 0]
    return np.where(total[..., 0] > 0, ap, np.nan)
