"""A self-contained HTML report comparing trained runs: tables, training curves, confusion matrices,
precision-recall curves, expert routing and test images with predicted and true lesions and grades.

    html = comparison_html(report, tables, runs, pr_curves, examples)

Every figure is a PNG embedded as a base64 data URI, so the file opens offline, moved or mailed,
with no link to anything on disk. Figures use matplotlib's object API (no pyplot).
"""
import base64
import html
import io
import math

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from codebase.data.cache import load_resized_image
from codebase.data.idrid import LESIONS
from codebase.data.images import read_mask_image, read_size
from codebase.evaluation.plots import history_figures
from codebase.evaluation.visualize import LESION_COLOURS, lesion_legend, overlay
from codebase.tasks import task_label
from codebase.training.run_folder import HISTORY_FILE, read_history
from inference.predictor import predict_image

SECTIONS = ("Accuracy and cost", "Training curves", "Confusion matrices", "Precision-recall curves",
            "Expert routing", "Test images")
FIGURE_DPI = 72
EXAMPLE_SIDE = 320  # pixels: longest side of a test image as shown
STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#eee}img{max-width:100%;display:block;margin:.5em 0}
h3{margin-top:1.5em}.note{color:#666}"""


def png_data_uri(figure):
    """A matplotlib Figure -> "data:image/png;base64,..."."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image(figure, alt):
    return f'<img alt="{html.escape(alt)}" src="{png_data_uri(figure)}">'


def _table(heading, header, rows):
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<h3>{html.escape(heading)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text):
    return f'<p class="note">{html.escape(text)}</p>'


def history_or_empty(run):
    """The run's history.json (a list of epoch dicts, today's names), or [] when it has none or it is unreadable."""
    try:
        history = read_history(run.folder)
    except (OSError, ValueError):
        return []
    return history if isinstance(history, list) else []


def confusion_figure(confusions):
    """{task key: [C][C] counts (rows true, columns predicted)} -> one annotated heat map per task."""
    figure = Figure(figsize=(3.6 * len(confusions), 3.4), layout="constrained")
    for axes, (key, matrix) in zip(figure.subplots(1, len(confusions), squeeze=False)[0], confusions.items()):
        matrix = np.asarray(matrix)
        axes.imshow(matrix, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black", fontsize=8)
        axes.set_title(key.upper())
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_xticks(range(matrix.shape[1]))
        axes.set_yticks(range(matrix.shape[0]))
    return figure


def pr_figure(curves):
    """{run name: {lesion: (precision, recall)}} -> one panel per lesion, one curve per run."""
    lesions = [lesion for lesion in LESIONS if any(lesion in by_lesion for by_lesion in curves.values())]
    figure = Figure(figsize=(3.2 * len(lesions), 3.2), layout="constrained")
    for axes, lesion in zip(figure.subplots(1, len(lesions), squeeze=False)[0], lesions):
        for name, by_lesion in curves.items():
            precision, recall = by_lesion.get(lesion, (np.empty(0), np.empty(0)))
            if recall.size:
                axes.plot(recall, precision, label=name)
        axes.set_title(lesion)
        axes.set_xlabel("recall")
        axes.set_ylabel("precision")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize="small")
        else:
            axes.text(0.5, 0.5, "no positive pixel\nin the test split", ha="center", va="center")
    return figure


def routing_figure(usage):
    """{task: [share of images that ran expert e]} -> grouped bars: per task, one bar per expert."""
    tasks = list(usage)
    experts = max(len(shares) for shares in usage.values())
    width = 0.8 / experts
    figure = Figure(figsize=(max(4.0, 0.9 * len(tasks) + 1.5), 3.2), layout="constrained")
    axes = figure.subplots()
    for expert in range(experts):
        shares = [usage[task][expert] if expert < len(usage[task]) else math.nan for task in tasks]
        axes.bar(np.arange(len(tasks)) + (expert - (experts - 1) / 2) * width, shares, width, label=f"expert {expert}")
    axes.set_xticks(range(len(tasks)), [task_label(task) for task in tasks])
    axes.set_ylabel("share of test images")
    axes.set_ylim(0, 1.05)
    axes.legend(fontsize="small")
    return figure


def _picture(path):
    """The image at most EXAMPLE_SIDE pixels a side (aspect kept): uint8 [h, w, 3]."""
    width, height = read_size(path)
    scale = min(1.0, EXAMPLE_SIDE / max(width, height))
    return load_resized_image(path, (max(1, round(height * scale)), max(1, round(width * scale))))


def _shrink(mask, size_hw):
    """bool [H, W] -> bool [h, w] (nearest), for showing beside a shrunk picture."""
    return np.asarray(Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(size_hw[::-1], Image.NEAREST)) > 0


def example_figure(run, examples, device, threshold=0.5):
    """Test images through one run: per segmentation image, true and predicted lesions side by side;
    per grading image, the image titled with its true and predicted grades.

    examples: {"segmentation": [SegmentationRecord], "grading": [GradingRecord]}.
    """
    rows = []
    if run.tasks("segmentation"):
        for record in examples.get("segmentation", []):
            picture = _picture(record.image_path)
            result, masks = predict_image(run, record.image_path, device, None, threshold)
            truth = {lesion: _shrink(np.asarray(read_mask_image(path)) >= 128, picture.shape[:2])
                     for lesion, path in record.mask_paths.items() if path is not None and lesion in masks}
            predicted = {lesion: _shrink(mask, picture.shape[:2]) for lesion, mask in masks.items()}
            grades = "  ".join(f"{key.upper()} {grade['grade']}" for key, grade in result["grades"].items())
            rows.append([(overlay(picture, truth), f"{record.name}: true lesions"),
                         (overlay(picture, predicted), f"predicted lesions {grades}".strip())])
    if run.tasks("grading"):
        for record in examples.get("grading", []):
            result, _ = predict_image(run, record.image_path, device, None, threshold)
            truth = {"rg": record.retinopathy_grade, "mer": record.macular_edema_risk}
            keys = [key for key in result["grades"] if key in truth]
            true_text = " ".join(f"{key.upper()} {truth[key]}" for key in keys)
            predicted_text = " ".join(f"{key.upper()} {result['grades'][key]['grade']}" for key in keys)
            caption = f"{record.name}: true {true_text}\npredicted {predicted_text}"
            rows.append([(_picture(record.image_path), caption)])
    if not rows:
        return None
    columns = max(len(row) for row in rows)
    figure = Figure(figsize=(3.4 * columns, 2.8 * len(rows) + 0.4), layout="constrained")
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for axes_row, row in zip(grid, rows):
        for axes, cell in zip(axes_row, row + [None] * (columns - len(row))):
            axes.axis("off")
            if cell is not None:
                axes.imshow(cell[0])
                axes.set_title(cell[1], fontsize=8)
    if run.tasks("segmentation"):
        lesion_legend(figure, [t.key for t in run.tasks("segmentation") if t.key in LESION_COLOURS],
                      loc="outside lower center", fontsize=7)
    return figure


def comparison_html(report, tables, runs, pr_curves, examples, device, title="Model comparison"):
    """The report as HTML text.

    report: comparison.json's content ("runs": entries with "name", "kind", "grading" (with
    "<task>_confusion"), "routing_usage" for routed runs). tables: [(heading, header, rows)] of
    strings, the accuracy and cost tables. runs: {name: TrainedRun} (history.json and the test
    images). pr_curves: {name: {lesion: (precision, recall)}}. examples: test records to show
    (see example_figure). Sections: SECTIONS, in that order.
    """
    entries = report["runs"]
    parts = [(f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
              f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"),
             _note(f"Test split of {report['data_root']}; device {report['device']} ({report['machine']}). "
                   "Figures measured on synthetic data describe the code, not real photographs."),
             f"<h2>{SECTIONS[0]}</h2>"]
    parts += [_table(*table) for table in tables]

    parts.append(f"<h2>{SECTIONS[1]}</h2>")
    for name, run in runs.items():
        figures = history_figures(history_or_empty(run))
        parts.append(f"<h3>{html.escape(name)}</h3>")
        parts += [_image(figure, f"{name} {figure_name}") for figure_name, figure in figures.items()]
        if not figures:
            parts.append(_note(f"{run.folder / HISTORY_FILE}: no history to draw"))

    parts.append(f"<h2>{SECTIONS[2]}</h2>")
    graded = [e for e in entries if any(key.endswith("_confusion") for key in e.get("grading", {}))]
    for entry in graded:
        confusions = {key[:-len("_confusion")]: value for key, value in entry["grading"].items()
                      if key.endswith("_confusion")}
        parts += [f"<h3>{html.escape(entry['name'])}</h3>", _image(confusion_figure(confusions), entry["name"])]
    if not graded:
        parts.append(_note("no grading run"))

    parts.append(f"<h2>{SECTIONS[3]}</h2>")
    curves = {name: by_lesion for name, by_lesion in pr_curves.items() if by_lesion}
    parts.append(_image(pr_figure(curves), "precision-recall") if curves else _note("no segmentation run"))

    parts.append(f"<h2>{SECTIONS[4]}</h2>")
    routed = [e for e in entries if e.get("routing_usage")]
    for entry in routed:
        parts += [f"<h3>{html.escape(entry['name'])}</h3>",
                  _note("Share of test images that ran each expert, per task (routing as evaluated)."),
                  _image(routing_figure(entry["routing_usage"]), f"{entry['name']} routing")]
    if not routed:
        parts.append(_note("no multi-task run"))

    parts.append(f"<h2>{SECTIONS[5]}</h2>")
    for name, run in runs.items():
        figure = example_figure(run, examples, device)
        if figure is not None:
            parts += [f"<h3>{html.escape(name)}</h3>", _image(figure, f"{name} test images")]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
