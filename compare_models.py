"""Compare trained runs on one test split: accuracy per task and lesion, and what each model costs.

    python compare_models.py --runs saved/classifier_demo saved/segmentation_demo saved/mlt_demo
    python compare_models.py --runs saved/A saved/B saved/C --out saved/comparison --device cuda --data-root data

Every run (any of the three train scripts) is evaluated on the test split of one data root (the
first run's data.root unless --data-root), each at the image size it was trained at, through
codebase.evaluation.evaluate: RG and MER accuracy, quadratic weighted kappa, joint accuracy; per lesion IoU,
Dice (threshold 0.5) and AUPR at the run's working resolution, and the same lesion metrics against
the original-size mask files (codebase.evaluation.fullres; rows "original resolution"; a run trained
on patches is predicted by sliding windows). The multi-task model routes top-p, as it is used.

Cost per image, batch 1, on --device, over the first --cost-images test segmentation images
resized to the run's size (or, with --cost-size H,W, every run at that one size, so that models
trained at different resolutions are compared on equal work): parameters, forward FLOPs
(torch.utils.flop_counter; a multiply-add is 2 FLOPs; mean over the images), latency (median of --repeats runs after warm-up) and peak memory
(codebase.evaluation.cost.peak_memory_bytes). A multi-task run whose grading and segmentation sizes differ
costs two forwards per image, one per side, as predict.py runs it. The multi-task model is
measured with top-p and with dense routing, with its mean experts per image per task on the test
split and the mutual information between the expert each test image is given to and the image's camera
and grade (codebase.evaluation.routing_information; "–" where the data root records no camera), and set against the classifier and DeepLabV3+ together (ratio of its top-p cost to the sum
of theirs). Each run is loaded with its best.pth (chosen on the validation split; model.pth where
it has none) or, with --weights last, model.pth; the tables name the file.

With --external FORMAT:PATH (repeatable; FORMAT as evaluate.py takes it) every run is also evaluated
on each external dataset as evaluate.py does (experiments.generalization): a "Generalization" table
gives per run each external set's metrics with their gap to the in-domain test split and the gap's
bootstrap interval (--resamples), "absent" where the set's labels or the run cannot score it.

Writes comparison.md and comparison.json to --out and prints the markdown, and report.html
(inference.report): the same tables, each run's training curves, confusion matrices, precision-
recall curves per lesion, expert usage per task of multi-task runs, and --examples test images
with true and predicted lesions and grades; figures are embedded, so the file opens offline.
"""
import argparse
import itertools
import json
import math
import sys
from pathlib import Path

from codebase.config import MAX_IMAGE_SIDE
from codebase.data.formats import dataset_argument, read_dataset
from codebase.data.idrid import (
    LESIONS,
    IDRiDError,
    grading_records,
    segmentation_records,
)
from codebase.data.image_datasets import GradingDataset, SegmentationDataset
from codebase.data.loaders import EpochLoader
from codebase.evaluation.cost import (
    count_parameters,
    forward_flops,
    machine,
    median_seconds,
    peak_memory_bytes,
)
from codebase.evaluation.evaluate import (
    evaluate_grading,
    evaluate_segmentation,
)
from codebase.evaluation.fullres import run_fullres_metrics, with_fullres
from codebase.evaluation.routing_information import LABELS as INFORMATION_LABELS
from codebase.errors import ProjectError, run_tool
from codebase.runtime.atomic import atomic_write_text
from codebase.runtime.device import autocast, resolve_device
from codebase.training.run_folder import refuse_run_records
from experiments.dataset_records import dataset_records
from experiments.generalization import TABLES as GENERALIZATION_TABLES
from experiments.generalization import evaluate_datasets
from inference.predictor import forward, forward_passes, load_input
from inference.report import comparison_html
from inference.runs import WEIGHTS, RunError, open_run

KIND_NAMES = {"classifier": "ResNet classifier", "segmentation": "DeepLabV3+", "multitask": "multi-task MoE"}
ACCURACY_ROWS = [("RG accuracy", "grading", "rg_accuracy"), ("RG quadratic weighted kappa", "grading", "rg_kappa"),
                 ("MER accuracy", "grading", "mer_accuracy"), ("MER quadratic weighted kappa", "grading", "mer_kappa"),
                 ("joint RG+MER accuracy", "grading", "joint_accuracy")]
ACCURACY_ROWS += [(f"{lesion} {label}", "segmentation", (lesion, metric))
                  for lesion in LESIONS for metric, label in (("iou", "IoU"), ("dice", "Dice"), ("aupr", "AUPR"))]
ACCURACY_ROWS += [(f"mean {label}", "segmentation", f"mean_{metric}")
                  for metric, label in (("iou", "IoU"), ("dice", "Dice"), ("aupr", "AUPR"))]
# The same lesion metrics against the original-size mask files (the challenge's protocol); the rows
# above are at each model's working resolution.
ACCURACY_ROWS += [(f"{lesion} {label}, original resolution", "segmentation", (lesion, f"{metric}_fullres"))
                  for lesion in LESIONS for metric, label in (("iou", "IoU"), ("dice", "Dice"), ("aupr", "AUPR"))]
ACCURACY_ROWS += [(f"mean {label}, original resolution", "segmentation", f"mean_{metric}_fullres")
                  for metric, label in (("iou", "IoU"), ("dice", "Dice"), ("aupr", "AUPR"))]
# (label, cost entry, field, scale to the unit in the label)
COST_ROWS = [("parameters (M)", None, "parameters", 1e-6),
             ("GFLOPs per image", "cost", "flops", 1e-9),
             ("latency per image (ms)", "cost", "latency_s", 1e3),
             ("peak memory (MB)", "cost", "peak_memory_bytes", 1e-6),
             ("GFLOPs per image, dense routing", "dense_cost", "flops", 1e-9),
             ("latency per image, dense routing (ms)", "dense_cost", "latency_s", 1e3),
             ("peak memory, dense routing (MB)", "dense_cost", "peak_memory_bytes", 1e-6)]
VERSUS_ROWS = COST_ROWS[:3]  # parameters, top-p FLOPs and latency


def evaluate_run(run, root, device):
    """({"grading": metrics, "segmentation": metrics}, {lesion: (precision, recall)}) of the run on root's
    test split (the sides it has)."""
    sizes, amp = run.input_sizes(), run.config["train"]["amp"]
    batch = run.config["train"]["eval_batch_size"]
    results, pr_curves = {}, {}
    if "grading" in sizes:
        dataset = GradingDataset(root, "test", sizes["grading"])
        tasks = run.tasks("grading")
        results["grading"] = evaluate_grading(lambda images: run.predict(images, side="grading"),
                                              EpochLoader(dataset, batch, train=False, seed=0), tasks,
                                              device, amp)
    if "segmentation" in sizes:
        dataset = SegmentationDataset(root, "test", sizes["segmentation"])
        tasks = run.tasks("segmentation")
        results["segmentation"], meter = evaluate_segmentation(
            lambda images: run.predict(images, side="segmentation"), EpochLoader(dataset, batch, train=False, seed=0),
            tasks, device, amp, keep_meter=True)
        pr_curves = {lesion: meter.pr_curve(lesion) for lesion in meter.lesions}
        results["segmentation"] = with_fullres(results["segmentation"], run_fullres_metrics(run, root, "test", device))
    return results, pr_curves


def measure_cost(run, paths, device, repeats, dense=False, size=None):
    """{"flops", "latency_s", "peak_memory_bytes"} per image (batch 1) over the images at paths.

    The images are resized to the run's trained sizes, or to size (height, width) when given.
    """
    passes = forward_passes(run, size)
    inputs = [{side: load_input(path, size).to(device) for side, size in passes.items()} for path in paths]
    amp = run.config["train"]["amp"]

    def run_one(images):
        with autocast(device, amp):
            forward(run, images, dense)

    flops = [forward_flops(run.model, lambda images=images: run_one(images))["total"] for images in inputs]
    cycle = itertools.cycle(inputs)
    latency = median_seconds(lambda: run_one(next(cycle)), device, repeats=repeats, warmup=2)
    return {"flops": sum(flops) / len(flops), "latency_s": latency,
            "peak_memory_bytes": peak_memory_bytes(lambda: run_one(inputs[0]), device)}


def describe_run(name, run, root, device, paths, repeats, cost_size=None):
    """(everything comparison.json holds about one run, its {lesion: (precision, recall)} on the test split)."""
    accuracy, pr_curves = evaluate_run(run, root, device)
    entry = {"name": name, "folder": str(run.folder), "kind": run.kind, "weights": run.weights_file,
             "backbone": run.config["model"]["backbone"],
             "input_sizes": {side: list(size) for side, size in run.input_sizes().items()},
             **accuracy, "parameters": count_parameters(run.model),
             "cost": measure_cost(run, paths, device, repeats, size=cost_size)}
    if run.kind == "multitask":
        entry["top_p"] = run.model.top_p
        entry["dense_cost"] = measure_cost(run, paths, device, repeats, dense=True, size=cost_size)
        routing = {**entry.get("grading", {}).pop("routing", {}), **entry.get("segmentation", {}).pop("routing", {})}
        entry["experts_per_image"] = {task: routing[task]["experts_per_image"] for task in run.task_specs}
        entry["routing_usage"] = {task: routing[task]["usage"] for task in run.task_specs}
        entry["routing_information"] = {task: {key: value for key, value in routing[task].items()
                                               if key.startswith(INFORMATION_LABELS)} for task in run.task_specs}
    return entry, pr_curves


def versus_baselines(entries):
    """{multi-task run: {field: {"multitask", "baselines", "ratio"}}}; {} unless one classifier and one DeepLabV3+."""
    baselines = [e for e in entries if e["kind"] in ("classifier", "segmentation")]
    if sorted(e["kind"] for e in baselines) != ["classifier", "segmentation"]:
        return {}
    result = {}
    for entry in (e for e in entries if e["kind"] == "multitask"):
        result[entry["name"]] = {}
        for _, section, field, _ in VERSUS_ROWS:
            mine, theirs = _cost_value(entry, section, field), sum(_cost_value(e, section, field) for e in baselines)
            result[entry["name"]][field] = {"multitask": mine, "baselines": theirs, "ratio": mine / theirs}
    return result


def _cost_value(entry, section, field):
    return entry[field] if section is None else entry.get(section, {}).get(field)


def _accuracy_value(entry, section, key):
    metrics = entry.get(section, {})
    if isinstance(key, tuple):
        return metrics.get(key[0], {}).get(key[1])
    return metrics.get(key)


def _cell(value, scale=1.0, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale:.{digits}f}"


def _cost_size_text(size):
    return "at each model's trained size" if size is None else f"with every model at {size[0]}x{size[1]}"


def _sizes_cell(sizes):
    """"96x144" for one size; "grading 96x144, segmentation 128x192" when the sides differ."""
    text = {side: f"{h}x{w}" for side, (h, w) in sizes.items()}
    if len(set(text.values())) == 1:
        return next(iter(text.values()))
    return ", ".join(f"{side} {value}" for side, value in text.items())


def _information_cell(information):
    """"camera MI / grade MI" of one task's routing on the test split, "–" for a label it has no value for
    (no camera recorded, no grade on segmentation images); "–" for a run that does not route."""
    if information is None:
        return "–"
    return " / ".join(_cell(information.get(f"{label}_mi"), 1, 3) if f"{label}_mi" in information else "–"
                      for label in INFORMATION_LABELS)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def tables(report):
    """[(heading, header, rows)]: accuracy, cost (one column per run) and each multi-task run against both
    baselines, cells as text; what comparison.md and report.html show."""
    entries = report["runs"]
    header = [""] + [f"{e['name']} ({KIND_NAMES[e['kind']]})" for e in entries]
    result = [("Accuracy", header, [[label] + [_cell(_accuracy_value(e, section, key)) for e in entries]
                                    for label, section, key in ACCURACY_ROWS])]
    rows = [["backbone"] + [e["backbone"] for e in entries],
            ["weights file"] + [e["weights"] for e in entries],
            ["trained input size (HxW)"] + [_sizes_cell(e["input_sizes"]) for e in entries]]
    rows += [[label] + [_cell(_cost_value(e, section, field), scale, 2) for e in entries]
             for label, section, field, scale in COST_ROWS]
    tasks = dict.fromkeys(t for e in entries for t in e.get("experts_per_image", {}))
    rows += [[f"experts per image: {task.split('_', 1)[1].upper()}"]
             + [_cell(e.get("experts_per_image", {}).get(task), 1, 2) for e in entries] for task in tasks]
    rows += [[f"expert-camera / expert-grade MI (nats): {task.split('_', 1)[1].upper()}"]
             + [_information_cell(e.get("routing_information", {}).get(task)) for e in entries] for task in tasks]
    result.append(("Cost", header, rows))
    for name, fields in report["multitask_vs_baselines"].items():
        result.append((f"{name} (top-p routing) against classifier + DeepLabV3+",
                       ["", "multi-task", "classifier + DeepLabV3+", "ratio"],
                       [[label, _cell(fields[field]["multitask"], scale, 2),
                         _cell(fields[field]["baselines"], scale, 2), _cell(fields[field]["ratio"], 1, 2) + "x"]
                        for label, _, field, scale in VERSUS_ROWS]))
    return result


GENERALIZATION_METRICS = GENERALIZATION_TABLES[0][1] + [(metric, f"{title} AUPR")
                                                        for metric, title in GENERALIZATION_TABLES[1][1]]


def generalization(run, datasets, device, resamples, seed=0):
    """evaluate.py's entries (experiments.generalization) of one run on [in-domain, *external] LabelledSets."""
    evaluated = [(labelled, dataset_records(run, labelled, device)) for labelled in datasets]
    return evaluate_datasets(evaluated, resamples, seed)


def _generalization_cell(entry, metric):
    value = entry["metrics"].get(metric)
    if value is None:
        return "absent"
    if value["value"] is None:
        return "undefined"
    gap = entry.get("gap", {}).get(metric)
    if not gap or gap["difference"] is None:
        return f"{value['value']:.3f}"
    low, high = gap["ci"]
    interval = f" [{low:+.3f}, {high:+.3f}]" if low is not None else ""
    return f"{value['value']:.3f} (Δ {gap['difference']:+.3f}{interval})"


def generalization_table(entries):
    """(heading, header, rows): per dataset and metric some run scores there, each run's value and, on an
    external set, its gap to in-domain with the gap's interval; None when no run was evaluated externally."""
    runs = [e for e in entries if e.get("generalization")]
    if not runs:
        return None
    header = [""] + [f"{e['name']} ({KIND_NAMES[e['kind']]})" for e in runs]
    rows = []
    for position, dataset in enumerate(runs[0]["generalization"]):
        name = dataset["name"] + (" (in-domain)" if position == 0 else "")
        for metric, title in GENERALIZATION_METRICS:
            cells = [_generalization_cell(e["generalization"][position], metric) for e in runs]
            if any(cell != "absent" for cell in cells):
                rows.append([f"{name}: {title}"] + cells)
    return ("Generalization (value; Δ: difference from in-domain, 95 % bootstrap interval)", header, rows)


def markdown(report):
    """comparison.md: accuracy and cost tables, one column per run, and the multi-task model against both baselines."""
    (_, header, accuracy), (_, _, cost), *versus = tables(report)
    lines = ["# Model comparison", "",
             f"Accuracy on the test split of `{report['data_root']}`, each model at its trained size. Cost per "
             f"image at batch 1 {_cost_size_text(report['cost_size'])} on {report['device']} "
             f"({report['machine']}), mean FLOPs and median latency over {report['cost_images']} test image(s), "
             f"{report['repeats']} timed runs after warm-up. A multiply-add counts as 2 FLOPs; "
             "the multi-task model routes top-p unless a row says dense.", "", "## Accuracy", ""]
    lines += _table(header, accuracy)
    lines += ["", "## Cost", ""]
    lines += _table(header, cost)
    lines += ["", "## Multi-task model against both baselines together", ""]
    if not versus:
        lines.append("(needs one classifier run, one DeepLabV3+ run and a multi-task run)")
    for (name, fields), (_, versus_header, versus_rows) in zip(report["multitask_vs_baselines"].items(), versus):
        lines += [f"`{name}` with top-p routing against classifier + DeepLabV3+:", ""]
        lines += _table(versus_header, versus_rows)
        lines.append("")
    table = generalization_table(report["runs"])
    if table is not None:
        heading, header, rows = table
        lines += ["", f"## {heading}", ""] + _table(header, rows) + [""]
    return "\n".join(lines).rstrip() + "\n"


def _without_nan(value):
    """NaN (a metric with nothing to measure, e.g. a lesion absent from the split) -> None, for strict JSON."""
    if isinstance(value, dict):
        return {key: _without_nan(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def image_size_arg(text):
    """"712,1072" or "712x1072" -> (712, 1072)."""
    try:
        height, width = (int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHT,WIDTH in pixels, e.g. 712,1072") from None
    if not (32 <= height <= MAX_IMAGE_SIDE and 32 <= width <= MAX_IMAGE_SIDE):
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least 32x32 and at most "
                                         f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels")
    return height, width


def run_names(folders):
    """Column names: folder names, or the paths as given where two folders share a name."""
    names = [Path(f).name for f in folders]
    return [name if names.count(name) == 1 else str(folder) for name, folder in zip(names, folders)]


def main(argv=None):
    """compare_models.py's entry point: bad input, or outputs that cannot be written, end in one
    `error:` line and exit code 2 (codebase.errors.run_tool)."""
    return run_tool(lambda: compare(argv))


def compare(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="finished run folders, e.g. saved/mlt_demo")
    parser.add_argument("--out", default="saved/comparison", help="output folder (default saved/comparison)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--data-root", help="data root whose test split all runs are evaluated on "
                                            "(default: the first run's data.root)")
    parser.add_argument("--cost-images", type=int, default=4, help="test images the cost is measured on (default 4)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency (default 10)")
    parser.add_argument("--cost-size", type=image_size_arg, metavar="H,W",
                        help="measure every model's cost at this one image size (default: each at its trained "
                             "size; accuracy is always measured at the trained size)")
    parser.add_argument("--weights", choices=WEIGHTS, default="best",
                        help="best: each run's best.pth, chosen on the validation split (model.pth where it has "
                             "none); last: model.pth (default best)")
    parser.add_argument("--external", type=dataset_argument, action="append", default=[], metavar="FORMAT:PATH",
                        help="also evaluate every run on this external dataset (repeatable; see evaluate.py)")
    parser.add_argument("--resamples", type=int, default=1000,
                        help="bootstrap resamples of the generalization intervals (default 1000)")
    parser.add_argument("--examples", type=int, default=3,
                        help="test images shown per split in report.html (default 3)")
    args = parser.parse_args(argv)
    if args.examples < 0:
        parser.error(f"--examples {args.examples}: expected a count of images, 0 or more")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file, expected a folder", file=sys.stderr)
        return 2
    try:
        refuse_run_records("--out", out, folder=True)
        device = resolve_device(args.device)
        runs = [open_run(folder, device, args.weights) for folder in args.runs]
        root = Path(args.data_root or runs[0].config["data"]["root"])
        paths = [record.image_path for record in segmentation_records(root, "test")[:args.cost_images]]
        if not paths:
            raise IDRiDError(f"{root}: the segmentation test split has no images to measure the cost on")
        datasets = [read_dataset(name, path) for name, path in [("idrid", root), *args.external]]
    except (RunError, ValueError, ProjectError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    entries, pr_curves = [], {}
    names = run_names(args.runs)
    for name, run in zip(names, runs):
        print(f"{name}: {KIND_NAMES[run.kind]} ({run.weights_file}), evaluating on {root} and measuring its cost "
              f"on {device}", flush=True)
        entry, pr_curves[name] = describe_run(name, run, root, device, paths, args.repeats, args.cost_size)
        if args.external:
            try:
                entry["generalization"] = generalization(run, datasets, device, args.resamples)
            except ProjectError as error:
                print("error: " + str(error).replace("\n", "\n  "), file=sys.stderr)
                return 2
        entries.append(entry)
    report = {"data_root": str(root), "device": str(device), "machine": machine(device), "cost_images": len(paths),
              "cost_size": list(args.cost_size) if args.cost_size else None, "repeats": args.repeats, "runs": entries, "multitask_vs_baselines": versus_baselines(entries)}
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    atomic_write_text(out / "comparison.json", json.dumps(_without_nan(report), indent=2, allow_nan=False))
    atomic_write_text(out / "comparison.md", text)
    print(text)
    examples = {"segmentation": segmentation_records(root, "test")[:args.examples],
                "grading": grading_records(root, "test")[:args.examples]}
    shown = tables(report) + [table for table in [generalization_table(report["runs"])] if table is not None]
    page = comparison_html(report, shown, dict(zip(names, runs)), pr_curves, examples, device)
    atomic_write_text(out / "report.html", page)
    print(f"written: {out / 'comparison.md'}, {out / 'comparison.json'}, {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
