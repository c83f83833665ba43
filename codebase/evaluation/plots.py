"""Training curves drawn from a run's history.

History schema (history.json, written by `codebase.training.loop.fit`): a list with one dict per
completed epoch,

    {"epoch": 3,                      # 1-based, as printed in the summary line
     "lr": 0.001,                     # learning rate of the first parameter group
     "time": 41.7,                    # seconds for the epoch (train + eval)
     "train": {"loss": 0.52, "components": {"loss_classification_rg": 0.31, "loss_segmentation_ma_focal": 0.01,
                                            "loss_segmentation_ma_dice": 0.2, ...}, ...},
     "validation": {                  # "test" instead when train.evaluate_on=test
         "grading": {"rg_accuracy": 0.71, "rg_kappa": 0.55, "rg_confusion": [[...]], ...},
         "segmentation": {"MA": {"iou": 0.2, "dice": 0.3, "aupr": 0.25, ...}, ...,
                          "mean_iou": 0.4, "mean_dice": 0.5, "mean_aupr": 0.45},
         "routing": {"segmentation_ma": {"experts_per_image": 1.6, "usage": [0.5, 0.3, 0.2],
                                         "camera_mi": 0.21, ...}, ...}},
     "monitor": 0.63}                 # the score model selection compares (epochs with an evaluation)

"train" is what the engine's train_one_epoch returned and "validation" what evaluate returned: any
nesting of dicts, with numbers or lists of numbers at the leaves. Curves are found by leaf name,
at any depth and in any section, so nothing here depends on a particular model:

- loss.png: leaves named "loss"; loss_components.png: leaves "loss_*" or "*_loss";
- grading.png: leaves ending in "accuracy" or "kappa";
- segmentation.png: leaves "iou", "dice", "aupr" (one line per parent key, e.g. per lesion)
  and "mean_iou", "mean_dice", "mean_aupr";
- router_usage.png: "usage" lists under "routing" -> {task}: one line per expert, one small panel
  per task in a grid four wide; router_experts.png: "experts_per_image", "busiest_share" and
  "usage_entropy" under "routing" -> {task}, a panel each; router_information.png: the mutual
  information between each image's expert and its camera ("camera_mi") and its grade ("grade_mi"),
  in nats, under "routing" -> {task}, a panel each with one curve per task;
- task_weights.png: the loss weighting's per-task weights, leaves under "task_weights" -> {task}
  (the train section's mean weight per epoch; equal weighting is 1 per task);
- learning_rate.png: "lr".

Missing keys just mean missing curves. Figures are built with matplotlib's object API (no
pyplot), so drawing never changes the backend of a notebook that imports this module.
"""

import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from codebase.config import is_number
from codebase.evaluation.metrics import LESION_METRICS
from codebase.runtime.atomic import atomic_write

KeyPath = tuple[str, ...]
CURVE_METRICS = ("iou", "dice", "aupr")  # per-lesion metrics drawn as curves
# Sections whose curves need no label: the validation split ("eval" in histories written before it
# existed). Curves of the training set, or of the test split when a run evaluated it every epoch on
# request, say so in their labels: "MA (test)".
MAIN_SECTIONS = ("validation", "eval")
# Figures this module drew under another name before: old name -> today's. Drawing today's figure
# removes the old file, so a run folder plotted before and resumed keeps no stale copy.
RENAMED_FIGURES = {"classification": "grading"}
ROUTER_STATISTICS = {"experts_per_image": "experts per image", "busiest_share": "busiest expert's share",
                     "usage_entropy": "usage entropy / log E"}
ROUTER_INFORMATION = {"camera_mi": "expert vs camera: mutual information (nats)",
                      "grade_mi": "expert vs grade: mutual information (nats)"}


def plot_history(history: list[dict], out_dir: str | Path) -> list[Path]:
    """Draw every figure the history has data for into out_dir/<name>.png (atomically), removing
    the file of the figure's earlier name (RENAMED_FIGURES) if there is one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in history_figures(history).items():
        path = out_dir / f"{name}.png"
        atomic_write(path, lambda file, figure=figure: figure.savefig(file, format="png", dpi=100))
        written.append(path)
        for old, new in RENAMED_FIGURES.items():
            if new == name:
                (out_dir / f"{old}.png").unlink(missing_ok=True)
    return written


def history_figures(history: list[dict]) -> dict[str, Figure]:
    """Figures by name (e.g. "loss", "segmentation"), only those with at least one curve."""
    scalars, lists = _series(history)
    figures = {
        "loss": _panels({"loss": _select(scalars, lambda leaf: leaf == "loss")}),
        "loss_components": _panels({"loss components": _select(scalars, _is_loss_component)}),
        "grading": _panels({
            "accuracy": _select(scalars, lambda leaf: leaf.endswith("accuracy")),
            "kappa": _select(scalars, lambda leaf: leaf.endswith("kappa")),
        }),
        "segmentation": _panels({
            LESION_METRICS[metric]: _lesion_curves(scalars, metric) for metric in CURVE_METRICS
        }),
        "router_usage": _panels(_router_usage(lists), ylabel="share of images", columns=4, ylim=(-0.03, 1.03)),
        "router_experts": _panels({title: {
            _task_label(path): curve for path, curve in scalars.items() if _under_routing(path) and path[-1] == leaf}
            for leaf, title in ROUTER_STATISTICS.items()}),
        "router_information": _panels({title: {
            _task_label(path): curve for path, curve in scalars.items() if _under_routing(path) and path[-1] == leaf}
            for leaf, title in ROUTER_INFORMATION.items()}, ylabel="nats"),
        "task_weights": _panels({"task weights (mean over the epoch's steps)": {
            _weighted_task_label(path): curve for path, curve in scalars.items() if _under_task_weights(path)}},
            ylabel="weight"),
        "learning_rate": _panels({"learning rate": {
            "lr": curve for path, curve in scalars.items() if path == ("lr",)}}),
    }
    return {name: figure for name, figure in figures.items() if figure is not None}


def _series(history: list[dict]):
    """Per leaf path: (epochs, values) for numbers, and (epochs, lists) for lists of numbers."""
    scalars: dict[KeyPath, tuple[list, list]] = {}
    lists: dict[KeyPath, tuple[list, list]] = {}
    for index, entry in enumerate(history):
        if not isinstance(entry, dict):
            continue
        epoch = entry.get("epoch", index + 1)
        for path, value in _leaves(entry):
            if path == ("epoch",):
                continue
            if is_number(value):
                target = scalars
            elif isinstance(value, list) and value and all(is_number(v) for v in value):
                target = lists
            else:
                continue
            epochs, values = target.setdefault(path, ([], []))
            epochs.append(epoch)
            values.append(value)
    return scalars, lists


def _leaves(node, path: KeyPath = ()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, path + (str(key),))
    else:
        yield path, node


def _is_loss_component(leaf: str) -> bool:
    return leaf.startswith("loss_") or leaf.endswith("_loss")


def _select(scalars, leaf_test) -> dict[str, tuple]:
    return {"/".join(path): curve for path, curve in scalars.items() if leaf_test(path[-1])}


def _lesion_curves(scalars, metric: str) -> dict[str, tuple]:
    curves = {}
    for path, curve in scalars.items():
        phase = "" if path[0] in MAIN_SECTIONS else f" ({path[0]})"
        if path[-1] == metric and len(path) >= 2:
            curves[path[-2] + phase] = curve
        elif path[-1] == f"mean_{metric}":
            curves["mean" + phase] = curve
    return curves


def _under_routing(path: KeyPath) -> bool:
    return len(path) >= 3 and path[-3] == "routing"


def _under_task_weights(path: KeyPath) -> bool:
    return len(path) >= 3 and path[-2] == "task_weights"


def _weighted_task_label(path: KeyPath) -> str:
    """The task of a "task_weights" leaf; its section too unless it is the training one."""
    return path[-1] if path[0] == "train" else f"{path[-1]} ({path[0]})"


def _task_label(path: KeyPath) -> str:
    return path[-2] if path[0] in MAIN_SECTIONS else f"{path[-2]} ({path[0]})"


def _router_usage(lists) -> dict[str, dict[str, tuple]]:
    """One panel per task; in it one curve per expert."""
    panels = {}
    for path, (epochs, usages) in lists.items():
        if not (_under_routing(path) and path[-1] == "usage"):
            continue
        num_experts = max(len(usage) for usage in usages)
        panels[_task_label(path)] = {
            f"expert {expert}": (epochs, [u[expert] if expert < len(u) else math.nan for u in usages])
            for expert in range(num_experts)
        }
    return panels


def _panels(panels: dict[str, dict[str, tuple]], ylabel: str = "", columns: int | None = None,
            ylim: tuple | None = None) -> Figure | None:
    """Line plots, one per non-empty panel, in one row or in a grid ``columns`` wide (smaller
    panels, filled row by row), on a common y range ``ylim`` if given; None if every panel is empty."""
    panels = {title: curves for title, curves in panels.items() if curves}
    if not panels:
        return None
    width, height = (5, 3.8) if columns is None else (3.6, 2.8)
    columns = len(panels) if columns is None else min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).flatten()
    for unused in grid[len(panels):]:
        unused.remove()
    for axes, (title, curves) in zip(grid, panels.items()):
        for label, (epochs, values) in curves.items():
            dashed = label.startswith(MAIN_SECTIONS) or label == "mean"
            axes.plot(epochs, values, linestyle="--" if dashed else "-", marker=".", label=label)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(ylabel)
        if ylim is not None:
            axes.set_ylim(*ylim)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return figure
