"""A grid's runs on external datasets: each configuration's score there, its generalization gap, and
both against the reference configuration, with paired bootstrap intervals.

Procedure (what results.md states): every external set's grading and lesion images are resampled
B times with replacement (numpy default_rng([seed, 100 + position, side]), the same resamples for
every configuration and seed), each run's metrics computed on the set and on each resample
(experiments.analysis.run_metrics) and pooled over seeds per resample as for the in-domain test
split (experiments.analysis.pooled). The gap of a configuration is, per resample, its pooled
external value minus its pooled in-domain value (the in-domain test split's resamples, independent
of the external ones); a mean over lesions is compared over the external set's lesions only. Against
the reference, the external value and the gap are differenced per resample: paired, the same
images on both sides. Every interval is the 2.5th-97.5th percentile over resamples.

Every run is evaluated as the in-domain records are (experiments.records): its model.pth at the
grid's image size, whole images resized (no sliding windows, so that in-domain and external maps
are predicted alike). Records are cached beside the in-domain ones, keyed by model.pth's SHA-256,
the dataset and the settings.
"""
import json
from pathlib import Path

import numpy as np

from codebase.data.formats import FORMATS
from codebase.runtime.atomic import atomic_write
from experiments.analysis import pooled, run_metrics, summary
from experiments.bootstrap import percentile_interval
from experiments.dataset_records import dataset_records
from experiments.generalization import SIDES, bootstrap_weights, gap_arrays
from experiments.records import check_same_images, file_sha256
from inference.runs import load_run

# The rows of results.md's generalization tables: the primary scores a set may have.
METRICS = ["rg_kappa", "mer_kappa", "dme_kappa", "MA_aupr", "HE_aupr", "EX_aupr", "SE_aupr", "OD_aupr", "mean_aupr"]
META = ("absent", "images", "plan")


def external_records(folder, labelled, device, cache_file):
    """dataset_records of the finished run in ``folder`` on ``labelled`` (whole images at the trained size),
    read from ``cache_file`` when it was written for the same model.pth, dataset and settings."""
    folder, cache_file = Path(folder), Path(cache_file)
    key = {"model_sha256": file_sha256(folder / "model.pth"), "format": labelled.format,
           "root": str(Path(labelled.root).resolve()), "sliding": "off", "threshold": 0.5}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as cached:
            if json.loads(str(cached["key"])) == key:
                records = json.loads(str(cached["meta"]))
                for side in SIDES:
                    fields = {name.split("/", 1)[1]: cached[name] for name in cached.files if name.startswith(side + "/")}
                    records[side] = fields or None
                return records
    records = dataset_records(load_run(folder, device), labelled, device, sliding="off")
    arrays = {"key": np.array(json.dumps(key)), "meta": np.array(json.dumps({k: records[k] for k in META}))}
    for side in SIDES:
        for name, array in (records[side] or {}).items():
            arrays[f"{side}/{name}"] = array
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache_file, lambda file: np.savez_compressed(file, **arrays))
    return records


def _difference(values, reference, level):
    delta = values - reference
    return {"difference": float(delta[0]), "ci": list(percentile_interval(delta[1:], level))}


def analyse_external(grid, planned, in_domain, datasets, device, resamples, seed, level, records_folder, log=print):
    """{"datasets": [...]} of results.json: per external LabelledSet, per configuration the metrics
    (summary over seeds and resamples), the gap to its own in-domain metrics, and both differenced
    against the reference. in_domain: {configuration: {metric: [S, R + 1]}} (experiments.report)."""
    entries = []
    for position, labelled in enumerate(datasets):
        title = FORMATS[labelled.format].TITLE
        per_configuration = {}
        for run in planned:
            log(f"[experiments] evaluating {run.name} on {title} ({labelled.root})")
            cache = Path(records_folder) / "external" / f"{position}_{labelled.format}" / run.configuration / \
                f"seed_{run.seed}.npz"
            per_configuration.setdefault(run.configuration, []).append(
                external_records(run.folder, labelled, device, cache))
        every = [records for runs in per_configuration.values() for records in runs]
        for side in SIDES:
            check_same_images(every, side, title)
        sizes = {side: next((len(r[side]["names"]) for r in every if r.get(side) is not None), 0) for side in SIDES}
        weights = {side: bootstrap_weights(n, resamples, [seed, 100 + position, tag])
                   for side, tag in SIDES.items() if (n := sizes[side])}
        pooled_external, pooled_gap, configurations = {}, {}, {}
        for name, runs in per_configuration.items():
            per_run = [run_metrics(r, weights.get("grading"), weights.get("segmentation")) for r in runs]
            metrics = {m: np.stack([values[m] for values in per_run]) for m in per_run[0]}
            pooled_external[name] = {m: pooled(v) for m, v in metrics.items()}
            lesions = [str(lesion) for lesion in runs[0]["segmentation"]["lesions"]] if runs[0]["segmentation"] else []
            pooled_gap[name] = gap_arrays(pooled_external[name], {m: pooled(v) for m, v in in_domain[name].items()},
                                          lesions)
            gap = {m: _difference(v, 0.0, level) for m, v in pooled_gap[name].items()}
            configurations[name] = {"metrics": {m: summary(v, level) for m, v in metrics.items()}, "gap": gap}
        reference = grid.reference
        for name, entry in configurations.items():
            if name == reference or reference not in configurations:
                continue
            entry["difference_to_reference"] = {m: _difference(v, pooled_external[reference][m], level)
                                                for m, v in pooled_external[name].items() if m in pooled_external[reference]}
            entry["gap_difference_to_reference"] = {m: _difference(v, pooled_gap[reference][m], level)
                                                    for m, v in pooled_gap[name].items() if m in pooled_gap[reference]}
        entries.append({"name": title, "format": labelled.format, "root": str(labelled.root),
                        "split": labelled.test_split or "all", "images": sizes,
                        "left_out": labelled.evaluation_left_out(), "absent": dict(labelled.absent),
                        "configurations": configurations})
    return {"datasets": entries, "procedure": "experiments.external", "sliding": "off"}


def _fmt(value, signed=False):
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _interval(ci):
    return "" if any(v is None or not np.isfinite(v) for v in ci) else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def markdown_lines(external, reference, label):
    """results.md's generalization section: per external set, one table, a row per metric and a column per
    configuration: the value (mean over seeds), its gap to in-domain with the gap's interval, and the
    gap's difference from the reference's gap with its paired interval."""
    lines = ["## Generalization: external datasets", "",
             "Per external set and configuration: the metric (mean over seeds on the whole set); **gap**: minus "
             "the configuration's own in-domain test value, with its 95 % interval; **vs ref**: that gap minus "
             f"the reference `{reference}`'s gap, paired over the same images (positive: the configuration loses "
             "less out of domain). Whole images resized to the grid's size, no sliding windows. A set's task "
             "that its labels cannot score is absent, never zero. Procedure: experiments/external.py.", ""]
    for entry in external["datasets"]:
        left = ", ".join(f"{count} {reason}" for reason, count in entry["left_out"].items()) or "none"
        absent = ", ".join(sorted(entry["absent"])) or "none"
        lines += [f"### {entry['name']} (`{entry['root']}`, split {entry['split']})", "",
                  f"Images scored: {entry['images']['grading']} graded, {entry['images']['segmentation']} with lesion "
                  f"masks; left out: {left}; absent: {absent}.", ""]
        names = list(entry["configurations"])
        header = ["metric"] + names
        rows = []
        for metric in METRICS:
            if not any(metric in c["metrics"] for c in entry["configurations"].values()):
                continue
            row = [label(metric) if metric != "dme_kappa" else "referable DME kappa"]
            for name in names:
                c = entry["configurations"][name]
                if metric not in c["metrics"]:
                    row.append("absent")
                    continue
                text = _fmt(c["metrics"][metric]["mean"])
                gap = c["gap"].get(metric)
                if gap:
                    text += f"; gap {_fmt(gap['difference'], True)}{_interval(gap['ci'])}"
                versus = c.get("gap_difference_to_reference", {}).get(metric)
                if versus:
                    text += f"; vs ref {_fmt(versus['difference'], True)}{_interval(versus['ci'])}"
                row.append(text)
            rows.append(row)
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return lines
