"""Generalization: a run's metrics on its in-domain test split and on external datasets, each with
a bootstrap interval over its images, and each external set's difference from in-domain.

Procedure (what generalization.md states): every dataset's grading and lesion images are resampled
separately, B times each, with replacement (experiments.bootstrap, numpy's default_rng seeded by
[seed, dataset position, side], so no two sets share resamples); every metric is computed on the
set and on each resample (experiments.analysis.run_metrics). A metric's interval is the 2.5th-97.5th
percentile over resamples. The gap of an external set is its metric minus the in-domain one, per
resample (the sets are independent samples, so the pairs are independent draws), its interval
taken the same way. A mean over lesions is compared over the external set's lesions only: the
in-domain side of its gap is the in-domain mean over those lesions.
"""
import math

import numpy as np

from codebase.data.formats import FORMATS
from codebase.data.idrid import LESIONS
from experiments.analysis import PRIMARY_MEAN, finite_mean, run_metrics, task_scores
from experiments.bootstrap import percentile_interval, resample_indices, resample_weights, with_full_set

SIDES = {"grading": 0, "segmentation": 1}
MEANS = ("mean_dice", "mean_aupr")
# Tables of generalization.md: (title, [(metric, column title)]); a column is shown when some dataset scores it.
TABLES = [("Grading", [("rg_kappa", "RG kappa"), ("rg_accuracy", "RG accuracy"), ("mer_kappa", "MER kappa"),
                       ("joint_accuracy", "joint RG+MER accuracy"), ("dme_accuracy", "DME accuracy"),
                       ("dme_kappa", "DME kappa")]),
          ("Lesions (AUPR)", [(f"{lesion}_aupr", lesion) for lesion in LESIONS] + [("mean_aupr", "mean")]),
          ("Lesions (Dice at the threshold)", [(f"{lesion}_dice", lesion) for lesion in LESIONS]
           + [("mean_dice", "mean")])]


def bootstrap_weights(n, resamples, seed):
    """[R + 1, n]: the set itself, then ``resamples`` resamples drawn by default_rng(seed)."""
    return with_full_set(resample_weights(resample_indices(n, resamples, seed), n))


def metric_arrays(records, resamples, seed, position):
    """{metric: float64 [R + 1]} of one dataset's records (dataset_records), row 0 the set itself."""
    weights = {side: bootstrap_weights(len(records[side]["names"]), resamples, [seed, position, tag])
               for side, tag in SIDES.items() if records.get(side) is not None}
    return run_metrics(records, weights.get("grading"), weights.get("segmentation"))


def _number(value):
    return None if value is None or not math.isfinite(value) else float(value)


def summarise(arrays, level=0.95):
    """{metric: {"value", "ci": [low, high]}} (None where undefined: no positive pixel in the set)."""
    return {name: {"value": _number(values[0]), "ci": [_number(v) for v in percentile_interval(values[1:], level)]}
            for name, values in arrays.items()}


def _lesion_mean(arrays, name, lesions):
    return finite_mean(np.stack([arrays[f"{lesion}_{name.split('_', 1)[1]}"] for lesion in lesions]))


def gap_arrays(external, in_domain, external_lesions):
    """{metric: float64 [R + 1]}: external minus in-domain, per resample, for the metrics both have;
    means over lesions taken over ``external_lesions`` on both sides, and the mean primary score over the
    tasks the external set scores on both sides."""
    result = {}
    for name, values in external.items():
        if name in MEANS:
            if not all(f"{lesion}_{name.split('_', 1)[1]}" in in_domain for lesion in external_lesions):
                continue
            reference = _lesion_mean(in_domain, name, external_lesions)
        elif name == PRIMARY_MEAN:  # in domain over the tasks this set scores, as on the set
            tasks = list(task_scores(external).values())
            if not all(task in in_domain for task in tasks):
                continue
            reference = finite_mean(np.stack([in_domain[task] for task in tasks]))
        elif name in in_domain:
            reference = in_domain[name]
        else:
            continue
        result[name] = values - reference
    return result


def gaps(external, in_domain, external_lesions, level=0.95):
    """{metric: {"difference", "ci"}}: `gap_arrays` with each difference's percentile interval."""
    return {name: {"difference": _number(delta[0]), "ci": [_number(v) for v in percentile_interval(delta[1:], level)]}
            for name, delta in gap_arrays(external, in_domain, external_lesions).items()}


def dataset_entry(labelled, role, records, arrays, level=0.95):
    """What metrics.json holds about one dataset."""
    title = FORMATS[labelled.format].TITLE
    return {"name": title, "format": labelled.format, "root": str(labelled.root), "role": role,
            "split": labelled.test_split or "all", "images": records["images"],
            "left_out": labelled.evaluation_left_out(), "absent": records["absent"],
            "segmentation_plan": records["plan"], "metrics": summarise(arrays, level)}


def evaluate_datasets(evaluated, resamples=1000, seed=0, level=0.95):
    """[metrics.json entry] from [(labelled set, records)]: the first is in-domain, the others external,
    each external entry with its "gap"."""
    arrays = [metric_arrays(records, resamples, seed, position) for position, (_, records) in enumerate(evaluated)]
    entries = []
    for position, ((labelled, records), values) in enumerate(zip(evaluated, arrays)):
        entry = dataset_entry(labelled, "in-domain" if position == 0 else "external", records, values, level)
        if position:
            lesions = [str(lesion) for lesion in records["segmentation"]["lesions"]] if records["segmentation"] else []
            entry["gap"] = gaps(values, arrays[0], lesions, level)
        entries.append(entry)
    return entries


def _cell(metric, entry):
    if metric not in entry["metrics"]:
        key = {"joint": "mer", "mean": None}.get(metric.split("_", 1)[0], metric.split("_", 1)[0])
        return "absent" if key is None or key in entry["absent"] else "–"
    value = entry["metrics"][metric]
    if value["value"] is None:
        return "undefined"
    low, high = value["ci"]
    text = f"{value['value']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{value['value']:.3f}"
    gap = entry.get("gap", {}).get(metric)
    if gap and gap["difference"] is not None:
        low, high = gap["ci"]
        text += f"; Δ {gap['difference']:+.3f}" + (f" [{low:+.3f}, {high:+.3f}]" if low is not None else "")
    return text


def _table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def _name(entry):
    return f"{entry['name']} (in-domain)" if entry["role"] == "in-domain" else entry["name"]


def markdown(report):
    """generalization.md: the datasets, then one table per kind of metric with one row per dataset
    (in-domain first); each cell a value with its interval and, for an external set, its difference
    from in-domain (Δ) with that difference's interval."""
    entries = report["datasets"]
    lines = [f"# Generalization of `{report['run']}`", "",
             f"{report['kind']} run, weights {report['weights']}. Each cell: the metric on the dataset's evaluated "
             f"images with its {round(100 * report['level'])} % bootstrap interval over them ({report['resamples']} "
             "resamples); for an external set, Δ is its difference from the in-domain row, with that difference's "
             "interval. A mean over lesions is compared over the external set's lesions. \"absent\": the set's "
             "labels (or the run) cannot score it (metrics.json says why), never zero.", ""]
    if report.get("synthetic"):
        lines += ["**Synthetic data**: every dataset here is a synthetic stand-in, not fundus photographs.", ""]
    rows = []
    for entry in entries:
        left = ", ".join(f"{count} {reason}" for reason, count in entry["left_out"].items()) or "0"
        plan = entry["segmentation_plan"]
        how = (f"{plan['whole']} whole, {plan['sliding']} sliding windows" if plan else "–")
        rows.append([_name(entry), entry["root"], entry["split"], str(entry["images"]["grading"]),
                     str(entry["images"]["segmentation"]), how, left])
    lines += _table(["dataset", "root", "split", "graded images", "lesion images", "lesion maps", "left out"], rows)
    for title, metrics in TABLES:
        columns = [(metric, name) for metric, name in metrics if any(metric in e["metrics"] for e in entries)]
        scored = [e for e in entries if any(metric in e["metrics"] for metric, _ in columns)]
        if not columns:
            continue
        lines += ["", f"## {title}", ""]
        lines += _table(["dataset"] + [name for _, name in columns],
                        [[_name(e)] + [_cell(metric, e) for metric, _ in columns] for e in scored])
    return "\n".join(lines) + "\n"
