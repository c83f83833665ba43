"""Metrics accumulated over a whole split: grading (accuracy, quadratic kappa, confusion, recall,
joint RG+MER accuracy) and lesion segmentation (IoU, Dice, sensitivity, precision, AUPR).

Meters keep their state in integer count tensors on the device of the inputs; ``update`` never
synchronises with the host, ``compute`` does once. ``state_tensors()`` lists the counts so a
distributed run can all_reduce (SUM) them in place before ``compute``; ``reset()`` zeroes them.

Conventions: a ratio whose denominator is 0 is NaN (e.g. the recall of a class absent from the
targets, the sensitivity or AUPR of a lesion absent from every mask); means over lesions skip
NaN. ``compute`` returns plain Python floats and lists (JSON-ready).
"""
import math

import numpy as np
import torch

from codebase.data.idrid import LESIONS

# Per-lesion metrics a SegmentationMeter computes, with the titles figures and tables give them.
LESION_METRICS = {"iou": "IoU", "dice": "Dice", "sensitivity": "sensitivity", "precision": "precision", "aupr": "AUPR"}


def _predictions(logits_or_predictions):
    """[B, C] logits -> [B] argmax; [B] class indices pass through."""
    if logits_or_predictions.ndim == 2:
        return logits_or_predictions.argmax(dim=1)
    return logits_or_predictions


def _ratio(numerator, denominator):
    return float(numerator) / float(denominator) if denominator else math.nan


def _nanmean(values):
    values = [value for value in values if not math.isnan(value)]
    return sum(values) / len(values) if values else math.nan


class ClassificationMeter:
    """Confusion matrix of one classification task (rows: true class, columns: predicted)."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        # Row-major confusion counts, then one count of out-of-range labels (reported by compute).
        self.counts = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64)

    def update(self, logits_or_predictions, targets):
        """logits [B, C] or predicted classes [B]; targets [B] class indices."""
        predictions = _predictions(logits_or_predictions).reshape(-1).long()
        targets = targets.reshape(-1).to(predictions.device).long()
        if predictions.shape != targets.shape:
            raise ValueError(f"{predictions.numel()} predictions for {targets.numel()} targets")
        self.counts = self.counts.to(predictions.device)
        classes = self.num_classes
        valid = (targets >= 0) & (targets < classes) & (predictions >= 0) & (predictions < classes)
        cells = torch.where(valid, targets * classes + predictions, classes * classes)  # [B]
        self.counts.index_add_(0, cells, torch.ones_like(cells))

    def state_tensors(self):
        return [self.counts]

    def reset(self):
        self.counts.zero_()

    def confusion(self):
        """[C, C] int64 numpy array, equal to sklearn's confusion_matrix(targets, predictions)."""
        counts = self.counts.cpu().numpy()
        if counts[-1]:
            raise ValueError(f"{counts[-1]} targets or predictions were outside 0..{self.num_classes - 1}")
        return counts[:-1].reshape(self.num_classes, self.num_classes)

    def compute(self):
        """{"accuracy", "kappa" (quadratic weighted), "confusion" [C][C], "recall" [C] per class}.

        Kappa is sklearn's cohen_kappa_score(weights="quadratic"), except where that is 0/0: when
        targets and predictions are all one and the same class, agreement is perfect and kappa is 1.
        """
        confusion = self.confusion().astype(np.float64)
        total = confusion.sum()
        if total == 0:
            raise ValueError("ClassificationMeter.compute() before any update")
        classes = np.arange(self.num_classes)
        penalty = (classes[:, None] - classes[None, :]) ** 2  # quadratic disagreement weights
        expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / total
        chance_disagreement = (penalty * expected).sum()
        kappa = 1.0 - (penalty * confusion).sum() / chance_disagreement if chance_disagreement else 1.0
        recall = [_ratio(confusion[c, c], confusion[c].sum()) for c in classes]
        return {"accuracy": float(np.trace(confusion) / total), "kappa": float(kappa),
                "confusion": confusion.astype(np.int64).tolist(), "recall": recall}


class JointAccuracyMeter:
    """Images whose RG and MER are both right, out of all images."""

    def __init__(self):
        self.counts = torch.zeros(2, dtype=torch.int64)  # [images with both right, images]

    def update(self, rg_logits, mer_logits, rg, mer):
        """Logits [B, 5] / [B, 3] (or predicted classes [B]); targets rg [B], mer [B]."""
        rg_right = _predictions(rg_logits).reshape(-1) == rg.reshape(-1).to(rg_logits.device)
        mer_right = _predictions(mer_logits).reshape(-1) == mer.reshape(-1).to(mer_logits.device)
        both = rg_right & mer_right  # [B]
        self.counts = self.counts.to(both.device)
        self.counts[0] += both.sum()
        self.counts[1] += both.numel()

    def state_tensors(self):
        return [self.counts]

    def reset(self):
        self.counts.zero_()

    def compute(self):
        both_right, images = self.counts.tolist()
        return both_right / images


class SegmentationMeter:
    """Per-lesion pixel counts at ``threshold`` and probability histograms for AUPR.

    A pixel is predicted positive when its probability is >= ``threshold``. AUPR is average
    precision computed as scikit-learn does (sum over descending thresholds of (R_n - R_{n-1}) P_n),
    with each histogram bin as one threshold. The ``bins`` bins are uniform in logit
    log(p / (1 - p)) over [-LOGIT_RANGE, LOGIT_RANGE] (clamped beyond): that resolves the
    near-0 and near-1 probabilities of a confident model, where uniform bins in p would tie
    thousands of pixels. Memory is lesions x 2 x bins counts, whatever the number of images.
    """

    LOGIT_RANGE = 20.0

    def __init__(self, lesions=LESIONS, threshold=0.5, bins=2**16):
        self.lesions = tuple(lesions)
        self.threshold = threshold
        self.bins = bins
        self.counts = torch.zeros(len(self.lesions), 3, dtype=torch.int64)  # [L, (TP, FP, FN)]
        self.histogram = torch.zeros(len(self.lesions), 2, bins, dtype=torch.int64)  # [L, (neg, pos), bins]

    def _bin(self, probs):
        """Histogram bin of each probability, as int64 (same shape)."""
        logits = torch.logit(probs.float())  # +-inf at 1 and 0, clamped into the end bins
        scale = self.bins / (2 * self.LOGIT_RANGE)
        return logits.add_(self.LOGIT_RANGE).mul_(scale).floor_().clamp_(0, self.bins - 1).long()

    def update(self, probs, masks):
        """probs [B, L, H, W] (any float dtype), masks [B, L, H, W] (0/1, any dtype)."""
        if probs.shape != masks.shape or probs.shape[1] != len(self.lesions):
            raise ValueError(f"probabilities {tuple(probs.shape)} and masks {tuple(masks.shape)} must both be "
                             f"[B, {len(self.lesions)}, H, W] for lesions {self.lesions}")
        self.counts = self.counts.to(probs.device)
        self.histogram = self.histogram.to(probs.device)
        for index in range(len(self.lesions)):  # one lesion at a time bounds temporary memory
            lesion_probs = probs[:, index]  # [B, H, W]
            truth = masks[:, index].to(probs.device) != 0  # [B, H, W] bool
            predicted = lesion_probs >= self.threshold
            self.counts[index] += torch.stack([(predicted & truth).sum(), (predicted & ~truth).sum(),
                                               (~predicted & truth).sum()])
            cells = (self._bin(lesion_probs) + self.bins * truth).reshape(-1)  # index into [2 * bins]
            ones = torch.ones(1, dtype=torch.int64, device=cells.device).expand(cells.numel())
            self.histogram[index].view(-1).index_add_(0, cells, ones)

    def state_tensors(self):
        return [self.counts, self.histogram]

    def reset(self):
        self.counts.zero_()
        self.histogram.zero_()

    def pr_curve(self, lesion):
        """(precision, recall) float64 numpy arrays, one point per occupied bin, by descending
        threshold (recall rising to 1). Empty arrays when the lesion has no positive pixel."""
        if lesion not in self.lesions:
            raise ValueError(f"lesion {lesion!r} is not one of {', '.join(self.lesions)}")
        negatives, positives = self.histogram[self.lesions.index(lesion)].cpu().double().flip(-1).numpy()
        if positives.sum() == 0:
            return np.empty(0), np.empty(0)
        occupied = (negatives + positives) > 0  # bins that are a threshold
        true_positives = np.cumsum(positives)[occupied]
        false_positives = np.cumsum(negatives)[occupied]
        return true_positives / (true_positives + false_positives), true_positives / positives.sum()

    def aupr(self, lesion):
        """Average precision of ``lesion`` (NaN when it has no positive pixel)."""
        precision, recall = self.pr_curve(lesion)
        if recall.size == 0:
            return math.nan
        return float(np.sum(np.diff(recall, prepend=0.0) * precision))

    def compute(self):
        """{lesion: {"iou", "dice", "sensitivity", "precision", "aupr"}, "mean_iou", "mean_dice", "mean_aupr"}."""
        results = {}
        for lesion, (tp, fp, fn) in zip(self.lesions, self.counts.cpu().tolist()):
            results[lesion] = {"iou": _ratio(tp, tp + fp + fn), "dice": _ratio(2 * tp, 2 * tp + fp + fn),
                               "sensitivity": _ratio(tp, tp + fn), "precision": _ratio(tp, tp + fp),
                               "aupr": self.aupr(lesion)}
        for name in ("iou", "dice", "aupr"):
            results[f"mean_{name}"] = _nanmean([results[lesion][name] for lesion in self.lesions])
        return results
