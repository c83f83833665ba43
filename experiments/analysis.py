"""Metrics over seeds and bootstrap resamples of the test images; differences; delta-m.

Procedure (what results.md states): the grading and the segmentation test sets are resampled
separately, B times each, with replacement, from numpy's default_rng(seed) (`resample_indices`);
the same resamples serve every configuration and seed. For each run (configuration x seed) every
metric is computed on the test set and on each resample. Pooling seeds: per resample, the mean
over seeds of the per-seed metric (seeds where it is undefined left out). The interval is the
2.5th-97.5th percentile over resamples of that pooled value; the point value is the mean over
seeds on the whole test set, with the standard deviation over seeds beside it. A difference
against the reference is computed per resample from the two pooled values (paired: the same
images for both) and its interval is taken the same way.
"""
import numpy as np

from codebase.data.idrid import NUM_MER_CLASSES, NUM_RG_CLASSES
from experiments.bootstrap import (
    accuracy,
    average_precision,
    confusion_matrices,
    dice,
    percentile_interval,
    quadratic_kappa,
)

# dme: referable macular edema (0/1), an external set's label or IDRiD's MER 2 (codebase.data.formats.base)
CLASSES = {"rg": NUM_RG_CLASSES, "mer": NUM_MER_CLASSES, "dme": 2}
# The primary score of each task, higher is better; delta-m averages these.
TASK_SCORES = {"classification_rg": "rg_kappa", "classification_mer": "mer_kappa"}
LESION_SCORE = "aupr"
PRIMARY_MEAN = "mean_primary"  # the mean of each task's primary score, as train.monitor's mean_primary
BLOCK = 64  # resamples per block when summing histograms (bounds memory: 64 x 2 x 2**16 x 8 bytes)


def run_metrics(records, grading_weights, segmentation_weights):
    """{metric: float64 [R + 1]} of one run; weights [R + 1, n] from bootstrap.with_full_set."""
    metrics = {}
    grading = records.get("grading")
    if grading is not None:
        right = {}
        for grade, classes in CLASSES.items():
            if f"{grade}_true" not in grading:
                continue
            true, predicted = grading[f"{grade}_true"], grading[f"{grade}_predicted"]
            confusion = confusion_matrices(true, predicted, classes, grading_weights)
            metrics[f"{grade}_kappa"] = quadratic_kappa(confusion)
            metrics[f"{grade}_accuracy"] = accuracy(confusion)
            right[grade] = true == predicted
        if {"rg", "mer"} <= set(right):
            metrics["joint_accuracy"] = grading_weights @ (right["rg"] & right["mer"]) / grading_weights.sum(axis=1)
    segmentation = records.get("segmentation")
    if segmentation is not None:
        lesions = [str(lesion) for lesion in segmentation["lesions"]]
        counts = np.einsum("rn,nlk->rlk", segmentation_weights, segmentation["counts"].astype(np.float64))
        for index, lesion in enumerate(lesions):
            metrics[f"{lesion}_dice"] = dice(counts[:, index])
            histogram = segmentation[f"histogram_{lesion}"].astype(np.float64)  # [n, 2, K] occupied bins
            flat = histogram.reshape(histogram.shape[0], -1)  # [n, 2 * K]
            metrics[f"{lesion}_aupr"] = np.concatenate([
                average_precision((segmentation_weights[start:start + BLOCK] @ flat).reshape(-1, 2, histogram.shape[-1]))
                for start in range(0, segmentation_weights.shape[0], BLOCK)])
        for name in ("dice", "aupr"):
            stacked = np.stack([metrics[f"{lesion}_{name}"] for lesion in lesions])  # [L, R + 1]
            metrics[f"mean_{name}"] = finite_mean(stacked, axis=0)
    if grading is not None and segmentation is not None:  # a multi-task model scored on both sides
        # as train.monitor's mean_primary: each task's primary score (kappa, a lesion's AUPR), undefined ones left out
        metrics[PRIMARY_MEAN] = finite_mean(np.stack([metrics[m] for m in task_scores(metrics).values()]), axis=0)
    return metrics


def finite_mean(values, axis=0):
    """Mean along ``axis`` of the finite values; NaN where none is (an undefined metric left out)."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    count = finite.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def pooled(per_seed):
    """[S, R + 1] -> [R + 1]: per test set / resample, the mean over seeds where defined."""
    return finite_mean(np.asarray(per_seed), axis=0)


def summary(per_seed, level=0.95):
    """{"mean", "std", "ci": [low, high], "seeds": [...]} of one metric of one configuration."""
    per_seed = np.asarray(per_seed)
    full = per_seed[:, 0]
    finite = full[np.isfinite(full)]
    return {"mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            "ci": list(percentile_interval(pooled(per_seed)[1:], level)),
            "seeds": [float(v) for v in full],
            "resamples_used": int(np.isfinite(pooled(per_seed)[1:]).sum())}


def difference(per_seed, reference_per_seed, level=0.95):
    """{"difference", "ci"}: configuration minus reference, paired over the same resamples."""
    delta = pooled(per_seed) - pooled(reference_per_seed)
    return {"difference": float(delta[0]), "ci": list(percentile_interval(delta[1:], level))}


def task_scores(metric_names):
    """{task: metric} for the tasks whose primary score is among metric_names."""
    tasks = {task: name for task, name in TASK_SCORES.items() if name in metric_names}
    tasks.update({f"segmentation_{name.split('_')[0].lower()}": name for name in metric_names
                  if name.endswith("_" + LESION_SCORE) and not name.startswith("mean_")})
    return tasks


def delta_m(multitask, baselines, level=0.95):
    """Mean relative change (%) of the multi-task model's primary scores over the single-task ones.

    multitask, baselines: {metric: [S, R + 1] per-seed values}; baselines merges every single-task
    configuration's metrics. delta_m = 100/T sum_t (M_mt,t - M_st,t) / M_st,t over the T tasks that
    both have (all scores higher-is-better, so no sign flips); per resample from pooled values.
    """
    tasks = {t: m for t, m in task_scores(multitask.keys()).items() if m in baselines}
    if not tasks:
        return None
    relative = []
    for metric in tasks.values():
        mine, theirs = pooled(multitask[metric]), pooled(baselines[metric])
        with np.errstate(invalid="ignore", divide="ignore"):
            relative.append(np.where(theirs != 0, (mine - theirs) / np.where(theirs != 0, theirs, 1), np.nan))
    values = 100.0 * np.mean(np.stack(relative), axis=0)  # NaN if any task's is
    return {"delta_m_percent": float(values[0]), "ci": list(percentile_interval(values[1:], level)),
            "tasks": {task: metric for task, metric in tasks.items()}}
