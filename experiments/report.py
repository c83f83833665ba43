"""Evaluate a grid's finished runs on one test split and write results.json and results.md."""
import html
import json
import math
from pathlib import Path

import numpy as np
import torch

from codebase.data.idrid import grading_records, segmentation_records
from codebase.evaluation.plots import history_figures
from codebase.evaluation.routing_information import LABELS as INFORMATION_LABELS
from codebase.runtime.atomic import atomic_write_text
from codebase.training.run_folder import TEST_METRICS_FILE, read_history, read_test_metrics
from experiments.analysis import delta_m, difference, run_metrics, summary
from experiments.budget import configuration_steps
from experiments.bootstrap import resample_indices, resample_weights, with_full_set
from experiments.cost import run_cost
from experiments.external import analyse_external, markdown_lines
from experiments.grids import CLASSIFIER, MULTITASK, SEGMENTATION
from experiments.records import check_same_images, run_records
from inference.report import STYLE, png_data_uri

PRIMARY = ["rg_kappa", "mer_kappa", "rg_accuracy", "mer_accuracy", "joint_accuracy"]
PRIMARY += [f"{lesion}_{name}" for name in ("aupr", "dice") for lesion in ("MA", "HE", "EX", "SE", "OD")]
PRIMARY += ["mean_aupr", "mean_dice", "mean_primary"]
LABELS = {"rg_kappa": "RG quadratic weighted kappa", "mer_kappa": "MER quadratic weighted kappa",
          "rg_accuracy": "RG accuracy", "mer_accuracy": "MER accuracy", "joint_accuracy": "joint RG+MER accuracy",
          "mean_aupr": "mean AUPR", "mean_dice": "mean Dice",
          "mean_primary": "mean primary score (kappa per grade, AUPR per lesion)"}


def label(metric):
    if metric in LABELS:
        return LABELS[metric]
    lesion, name = metric.split("_", 1)
    return f"{lesion} {'AUPR' if name == 'aupr' else 'Dice'}"


def routing_summary(folders):
    """Routing on the test split of a multi-task configuration, from each seed's own test evaluation
    (test_metrics.json, its final weights): per task the usage of each expert (share of the test
    images that ran it), experts per image and the busiest and least used expert's shares, each the
    mean over seeds, and the worst seed's busiest (``busiest_share_max``) and least used
    (``least_share_min``) shares. Expert e of one seed has nothing to do with expert e of another, so
    the per-expert means blur seeds that collapsed onto different experts; the worst-seed shares do not.
    {} for runs without routing (the baselines) or without a test evaluation."""
    per_task = {}
    for folder in folders:
        path = Path(folder) / TEST_METRICS_FILE
        if not path.is_file():
            return {}
        results = read_test_metrics(folder)
        routing = (results.get("last") or {}).get("metrics", {}).get("routing", {})
        for task, stats in routing.items():
            per_task.setdefault(task, []).append(stats)
    summary_ = {}
    for task, runs in per_task.items():
        if len(runs) != len(folders):
            continue
        summary_[task] = {"usage": np.mean([r["usage"] for r in runs], axis=0).tolist(),
                          "experts_per_image": float(np.mean([r["experts_per_image"] for r in runs])),
                          "busiest_share": float(np.mean([r["busiest_share"] for r in runs])),
                          "least_share": float(np.mean([min(r["usage"]) for r in runs])),
                          "busiest_share_max": float(max(r["busiest_share"] for r in runs)),
                          "least_share_min": float(min(min(r["usage"]) for r in runs)),
                          "seeds": len(runs), "information": information_summary(runs)}
    return summary_


VALIDATION_METRICS = (("grading", "rg_kappa"), ("grading", "mer_kappa"), ("segmentation", "mean_aupr"))


def validation_summary(folders):
    """The validation split's scores at each run's best evaluation (the epoch best.pth holds, the highest
    monitored score in history.json): {"monitor": {"mean", "std", "per_seed"}, metric: {...}} over the
    seeds, for choosing between configurations without the test split. {} when a run has no
    monitored evaluation (no validation split)."""
    best = []
    for folder in folders:
        evaluated = [entry for entry in read_history(folder) if entry.get("monitor") is not None]
        if not evaluated:
            return {}
        best.append(max(evaluated, key=lambda entry: entry["monitor"]))
    values = {"monitor": [entry["monitor"] for entry in best]}
    for side, metric in VALIDATION_METRICS:
        scores = [(entry.get("validation") or {}).get(side, {}).get(metric) for entry in best]
        if all(isinstance(score, (int, float)) for score in scores):
            values[metric] = scores
    return {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": [float(x) for x in v]}
            for name, v in values.items()}


def information_summary(runs):
    """Per label ("camera", "grade"), from one task's test routing statistics of each seed: the mutual
    information between expert and label (nats; codebase/evaluation/routing_information.py), its
    normalised value (None unless every seed has one) and the plug-in bias, each the mean over
    seeds, and the seeds' own values; {"absent": reason} unless every seed measured it."""
    result = {}
    for label in INFORMATION_LABELS:
        key = f"{label}_mi"
        missing = [run for run in runs if key not in run]
        if missing:
            result[label] = {"absent": missing[0].get(f"{key}_absent", "not measured by the runs' evaluation")}
            continue
        normalised = [run.get(f"{key}_normalised") for run in runs]
        result[label] = {"mi": float(np.mean([run[key] for run in runs])),
                         "mi_normalised": None if None in normalised else float(np.mean(normalised)),
                         "bias": float(np.mean([run[f"{key}_bias"] for run in runs])),
                         "mi_per_seed": [run[key] for run in runs]}
    return result


def information_lines(routed):
    """The results.md section on the routing's mutual information, from routing_summary() per
    configuration ({configuration: {task: summary}})."""
    lines = ["", "## Routing mutual information on the test split", "",
             "Per multi-task configuration and task, the plug-in mutual information, in nats, between the expert "
             "that weighs most in each test image's output and the image's camera profile (as the data root's "
             "synthetic.json records it) or its retinopathy grade, mean over seeds; in brackets divided by log K, "
             "K = min(label values among the images, experts): 0 when the expert says nothing about the label, "
             "1 when each value has an expert of its own. Expert indices need not match across seeds; the MI "
             "does not depend on them. With n images the plug-in estimate is biased upwards by about "
             "(values - 1)(experts used - 1) / (2n) nats (the last column, mean over seeds): an MI near it is no "
             "evidence that routing follows the label. – marks what could not be measured (below).", ""]
    rows, reasons = [], {}
    for name, routing in routed.items():
        for task, stats in routing.items():
            information = stats.get("information", {})
            cells, biases = [], []
            for label in INFORMATION_LABELS:
                entry = information.get(label, {"absent": "not measured by the runs' evaluation"})
                if "absent" in entry:
                    reasons.setdefault((label, entry["absent"]), []).append(task)
                    cells.append("–")
                    biases.append("–")
                    continue
                normalised = entry["mi_normalised"]
                cells.append(_cell(entry["mi"]) + ("" if normalised is None else f" ({normalised:.2f})"))
                biases.append(_cell(entry["bias"]))
            rows.append([name, task] + cells + [" / ".join(biases)])
    lines += _table(["configuration", "task", "expert vs camera", "expert vs grade", "plug-in bias (camera / grade)"],
                    rows)
    if reasons:
        lines += [""] + [f"- {label} not measured for {', '.join(dict.fromkeys(tasks))}: {reason}."
                         for (label, reason), tasks in reasons.items()]
    return lines


def analyse(grid_name, grid, planned, root, device, resamples=1000, seed=0, level=0.95, cost_images=2,
            cost_repeats=5, records_folder=None, log=print, external=()):
    """The results dict of results.json (see results.md for the procedure); ``external``: LabelledSets every
    run is also evaluated on (experiments.external)."""
    size = tuple(grid.budget.image_size)
    records_folder = Path(records_folder)
    n_grading, n_segmentation = len(grading_records(root, "test")), len(segmentation_records(root, "test"))
    weights = {side: with_full_set(resample_weights(resample_indices(n, resamples, seed + offset), n))
               for side, n, offset in (("grading", n_grading, 0), ("segmentation", n_segmentation, 1))}
    per_configuration = {}
    for run in planned:
        log(f"[experiments] evaluating {run.name}")
        records = run_records(run.folder, root, size, device, records_folder / run.configuration / f"seed_{run.seed}.npz")
        entry = per_configuration.setdefault(run.configuration, {"records": [], "seeds": []})
        entry["records"].append(records)
        entry["seeds"].append(run.seed)
    for side in ("grading", "segmentation"):
        check_same_images([r for entry in per_configuration.values() for r in entry["records"]], side, "test split")

    metrics = {}  # configuration -> metric -> [S, R + 1]
    for name, entry in per_configuration.items():
        per_run = [run_metrics(records, weights["grading"], weights["segmentation"]) for records in entry["records"]]
        metrics[name] = {metric: np.stack([m[metric] for m in per_run]) for metric in per_run[0]}

    reference = metrics[grid.reference]
    configurations = {}
    for name, configuration in grid.configurations.items():
        first = next(run for run in planned if run.configuration == name)
        log(f"[experiments] measuring the cost of {name} ({first.folder})")
        configurations[name] = {
            "script": configuration.script, "overrides": list(configuration.overrides),
            "seeds": per_configuration[name]["seeds"],
            "metrics": {m: summary(values, level) for m, values in metrics[name].items()},
            "difference_to_reference": {m: difference(values, reference[m], level)
                                        for m, values in metrics[name].items() if m in reference and name != grid.reference},
            "cost": run_cost(first.folder, root, size, device, cost_images, cost_repeats),
            "routing": routing_summary([run.folder for run in planned if run.configuration == name]),
            "validation": validation_summary([run.folder for run in planned if run.configuration == name]),
            "optimizer_steps": configuration_steps(grid, configuration), "upcycle_from": configuration.upcycle_from}
    single_task = {}
    for name, configuration in grid.configurations.items():
        if configuration.script in (CLASSIFIER, SEGMENTATION):
            single_task.setdefault(configuration.script, []).append(name)
    baselines = [names[0] for names in single_task.values() if len(names) == 1]
    baseline_metrics = {m: v for name in baselines for m, v in metrics[name].items()}
    delta = {name: delta_m(metrics[name], baseline_metrics, level) for name, c in grid.configurations.items()
             if c.script == MULTITASK and baselines}
    results = {"grid": grid_name, "description": grid.description, "reference": grid.reference,
               "data_root": str(root), "device": str(device), "torch": torch.__version__,
               "demo": grid.demo,
               "budget": {"image_size": list(size), "batch_size": grid.budget.batch_size,
                          "optimizer_steps": grid.budget.optimizer_steps,
                          "images_seen_per_side": grid.budget.batch_size * grid.budget.optimizer_steps,
                          "settings": {run.configuration: run.settings for run in planned}},
               "test_images": {"grading": n_grading, "segmentation": n_segmentation},
               "bootstrap": {"resamples": resamples, "seed": seed, "level": level},
               "single_task_baselines": baselines, "configurations": configurations, "delta_m": delta}
    if external:
        results["external"] = analyse_external(grid, planned, metrics, external, device, resamples, seed, level,
                                               records_folder, log)
    return results


def _cell(value, digits=3):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _interval(ci, digits=3):
    return "–" if any(_cell(v) == "–" for v in ci) else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def validation_lines(configurations):
    """The validation section: each configuration's scores at its best epoch, and the one to choose."""
    chosen = {name: c["validation"] for name, c in configurations.items() if c.get("validation")}
    if not chosen:
        return []
    metrics = [m for _, m in VALIDATION_METRICS if all(m in v for v in chosen.values())]
    best = max(chosen, key=lambda name: chosen[name]["monitor"]["mean"])
    lines = ["## Validation (for choosing a configuration)", "",
             "Each run's validation split at its best evaluation (the weights in best.pth, the highest monitored "
             "score), mean ± standard deviation over seeds. Choose between configurations here, never on the "
             f"test split. Highest monitored score: `{best}`. The validation split is small (20 % of the "
             "training images), so a difference within the seeds' spread chooses nothing.", ""]
    lines += _table(["configuration", "monitored score"] + [label(m) for m in metrics],
                    [[name] + [f"{_cell(v[m]['mean'])} ± {_cell(v[m]['std'])}" for m in ["monitor"] + metrics]
                     for name, v in chosen.items()])
    return lines + [""]


def step_exceptions(configurations, budget_steps):
    """Lines naming the configurations that take steps of their own (an upcycled one and its source)."""
    own = {name: c for name, c in configurations.items() if c.get("optimizer_steps", budget_steps) != budget_steps}
    if not own:
        return []
    return [f"Except: `{name}` takes {c['optimizer_steps']} steps" + (
        f", starting from `{c['upcycle_from']}`'s run of the same seed (upcycled; the two add up to the budget's "
        f"{budget_steps})" if c.get("upcycle_from") else "") + "." for name, c in own.items()] + [""]


def markdown(results):
    """results.md from the results dict."""
    budget, boot, tests = results["budget"], results["bootstrap"], results["test_images"]
    configurations = results["configurations"]
    seeds = sorted({s for c in configurations.values() for s in c["seeds"]})
    level = round(100 * boot["level"])
    lines = [f"# Experiment grid `{results['grid']}`", "", results["description"], "",
             f"Data: `{results['data_root']}`. **Figures measured on synthetic data are not results on real fundus "
             "photographs**; they show that the pipeline runs and how the configurations compare on the "
             "synthetic task only.", "",
             "## Budget", "",
             f"Every configuration: images resized to {budget['image_size'][0]}x{budget['image_size'][1]} "
             f"(training and test), batch {budget['batch_size']} per side, {budget['optimizer_steps']} optimizer "
             f"steps, so {budget['images_seen_per_side']} training images seen per side (grading, segmentation); "
             "a multi-task step sees one grading and one segmentation batch, each baseline one batch of its side. "
             f"Other settings are each script's own {'demo recipe (--demo)' if results['demo'] else 'defaults'} "
             "plus the settings below.", "",
             f"Seeds: {', '.join(map(str, seeds))}. Test images: {tests['grading']} grading, "
             f"{tests['segmentation']} segmentation.", ""]
    lines += step_exceptions(configurations, budget["optimizer_steps"])
    lines += _table(["configuration", "script", "settings"],
                    [[name, c["script"], " ".join(f"`{s}`" for s in budget["settings"][name])]
                     for name, c in configurations.items()])
    lines += ["", "## Procedure", "",
              f"Point value: mean over seeds of the metric on the whole test split (± standard deviation over "
              f"seeds). {level} % interval: percentile bootstrap over test images, {boot['resamples']} resamples "
              f"drawn with replacement by numpy `default_rng({boot['seed']})` (grading) and "
              f"`default_rng({boot['seed'] + 1})` (segmentation), the same resamples for every run; per resample "
              "the metric of each seed's model, averaged over seeds (pooled), then the 2.5th and 97.5th "
              "percentiles over resamples (resamples where the metric is undefined left out). Differences "
              f"against the reference `{results['reference']}` are paired: per resample the pooled value minus "
              "the reference's on the same images. AUPR is computed from per-image probability histograms "
              "(logit-uniform bins), Dice from per-image pixel counts at threshold 0.5, both pooled over the "
              "images of the (re)sample. The interval covers the test images' sampling only; the spread over "
              "seeds is the ± column.", ""]
    for section, key in (("Results", "metrics"), (f"Difference against `{results['reference']}`", None)):
        lines += [f"## {section}", ""]
        names = list(configurations)
        metrics = [m for m in PRIMARY if any(m in c["metrics"] for c in configurations.values())]
        rows = []
        for metric in metrics:
            row = [label(metric)]
            for name in names:
                c = configurations[name]
                if key == "metrics":
                    s = c["metrics"].get(metric)
                    row.append("–" if s is None else f"{_cell(s['mean'])} ± {_cell(s['std'])} {_interval(s['ci'])}")
                else:
                    d = c["difference_to_reference"].get(metric)
                    row.append("reference" if name == results["reference"] else
                               "–" if d is None else f"{_cell(d['difference'], 3)} {_interval(d['ci'])}")
            rows.append(row)
        lines += _table(["metric"] + names, rows) + [""]
    lines += validation_lines(configurations)
    lines += ["## Multi-task model against the single-task baselines (delta-m)", ""]
    if not results["delta_m"]:
        lines.append("(needs a multi-task configuration and a classifier and/or DeepLabV3+ configuration)")
    else:
        lines += [f"delta_m = 100/T sum_t (M_mt,t - M_st,t) / M_st,t over the tasks with a single-task baseline "
                  f"({', '.join(results['single_task_baselines'])}); primary scores, all higher-is-better: "
                  "quadratic weighted kappa for RG and MER, AUPR per lesion. Undefined (–) where a baseline "
                  "score is 0 or undefined.", ""]
        lines += _table(["configuration", "delta_m (%)", f"{level} % interval", "tasks"],
                        [[name, _cell(d["delta_m_percent"], 2) if d else "–", _interval(d["ci"], 2) if d else "–",
                          ", ".join(d["tasks"]) if d else "–"] for name, d in results["delta_m"].items()])
    routed = {name: c["routing"] for name, c in configurations.items() if c.get("routing")}
    if routed:
        tasks = list(dict.fromkeys(task for routing in routed.values() for task in routing))
        lines += ["", "## Routing on the test split", "",
                  "Per multi-task configuration and task, from each seed's own test evaluation "
                  "(test_metrics.json): the share of the test images the busiest expert ran, in the worst seed "
                  "(the largest); the share the least used expert ran, in the worst seed (the smallest); in "
                  "brackets the mean number of experts per image over seeds. Expert indices are not comparable "
                  "across seeds, so no per-expert mean is shown (results.json keeps them).", ""]
        lines += _table(["configuration"] + [task.split("_", 1)[-1].upper() for task in tasks],
                        [[name] + ["–" if task not in routing else
                                   f"{routing[task]['busiest_share_max']:.2f} / {routing[task]['least_share_min']:.2f}"
                                   f" ({routing[task]['experts_per_image']:.2f})" for task in tasks]
                         for name, routing in routed.items()])
        lines += information_lines(routed)
    if results.get("external"):
        lines += [""] + markdown_lines(results["external"], results["reference"], label)
    lines += ["", "## Cost", "",
              f"Per image at batch 1 and {budget['image_size'][0]}x{budget['image_size'][1]} on "
              f"{results['device']} (torch {results['torch']}), of each configuration's first seed: "
              "parameters, forward FLOPs (torch.utils.flop_counter, a multiply-add is 2 FLOPs; mean over test "
              "images), median latency. The multi-task model routes top-p, as it is used; its dense GFLOPs run every "
              "expert on every image (the same weights), and top-p / dense is their ratio.", ""]
    lines += _table(["configuration", "parameters (M)", "GFLOPs", "dense GFLOPs", "top-p / dense", "latency (ms)"],
                    [[name, _cell(c["cost"]["parameters"] / 1e6, 2), _cell(c["cost"]["flops"] / 1e9, 3),
                      _cell((c["cost"].get("dense_flops") or math.nan) / 1e9, 3),
                      _cell(c["cost"]["flops"] / c["cost"]["dense_flops"], 2) if c["cost"].get("dense_flops") else "–",
                      _cell(c["cost"]["latency_s"] * 1e3, 1)] for name, c in configurations.items()])
    return "\n".join(lines) + "\n"


def _strict(value):
    """NaN and infinities -> None, for strict JSON."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_html(results, planned, title):
    """A self-contained report.html: results.md's text and tables, then each configuration's training
    curves (its first seed's history.json), every figure embedded (nothing links to a file)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    table = []
    for line in markdown(results).splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([cell.strip() for cell in line.strip("|").split("|")])
            continue
        if table:
            head, *rows = table
            parts.append(f"<table><thead><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in head)}</tr></thead><tbody>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
                         + "</tbody></table>")
            table = []
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            parts.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    parts.append("<h2>Training curves (first seed of each configuration)</h2>")
    for name in dict.fromkeys(run.configuration for run in planned):
        first = next(run for run in planned if run.configuration == name)
        try:
            history = read_history(first.folder)
        except (OSError, ValueError):
            history = []
        parts.append(f"<h3>{html.escape(name)}</h3>")
        parts += [f'<img alt="{html.escape(name)} {figure_name}" src="{png_data_uri(figure)}">'
                  for figure_name, figure in history_figures(history if isinstance(history, list) else []).items()]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write(results, folder, planned=()):
    """results.json, results.md and report.html in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "results.json", json.dumps(_strict(results), indent=1, allow_nan=False) + "\n")
    atomic_write_text(folder / "results.md", markdown(results))
    atomic_write_text(folder / "report.html", report_html(results, list(planned), f"Experiment {folder.name}"))
    return folder / "results.md", folder / "results.json", folder / "report.html"
