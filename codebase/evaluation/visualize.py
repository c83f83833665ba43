"""How lesions and segmentation results are shown, in one place for every notebook and predict.py:
a colour per lesion, masks painted over an image, the legend, and the per-lesion metrics table."""
import math

import numpy as np
import torch

from codebase.data.idrid import LESION_NAMES, LESIONS
from codebase.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from codebase.evaluation.metrics import LESION_METRICS

LESION_COLOURS = {
    "MA": (0.1, 1.0, 0.1),
    "HE": (0.1, 0.4, 1.0),
    "EX": (1.0, 0.1, 1.0),
    "SE": (0.0, 1.0, 1.0),
    "OD": (1.0, 1.0, 0.3),
}


def displayable(image):
    """A normalised image tensor [3, H, W] (as the datasets give it) -> float array [H, W, 3] in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def overlay(image, masks, alpha=0.65, colours=LESION_COLOURS):
    """Paint each lesion's mask over ``image`` in the lesion's colour.

    image: uint8 [H, W, 3] or float [H, W, 3] in [0, 1]; masks: {lesion: [H, W]} (non-zero =
    foreground), or an array [5, H, W] in LESIONS order; colours: {lesion: (r, g, b) in [0, 1]}.
    Returns float [H, W, 3] in [0, 1].
    """
    if not isinstance(masks, dict):
        masks = dict(zip(LESIONS, masks))
    out = np.asarray(image, dtype=np.float32)
    out = out / 255 if np.asarray(image).dtype == np.uint8 else out.copy()
    for lesion, mask in masks.items():
        where = np.asarray(mask) != 0
        out[where] = (1 - alpha) * out[where] + alpha * np.asarray(colours[lesion])
    return out


def lesion_legend(figure, lesions=LESIONS, **kwargs):
    """A legend of lesion colours along the top of ``figure`` (keyword arguments go to figure.legend)."""
    from matplotlib.patches import Patch  # here, not at import: matplotlib costs a script's start about 1 s
    handles = [Patch(color=LESION_COLOURS[k], label=f"{k}: {LESION_NAMES[k]}") for k in lesions]
    options = {"loc": "upper center", "ncol": len(handles), "frameon": False, **kwargs}
    return figure.legend(handles=handles, **options)


def lesion_metrics_table(results, lesions=LESIONS, metrics=tuple(LESION_METRICS)):
    """Text table: one row per lesion (and the mean), one column per metric.

    results: what codebase.evaluation.evaluate_segmentation returns ({lesion: {metric: value}},
    "mean_iou", ...). NaN (e.g. a lesion absent from the split) prints as "-".
    """
    def cell(value):
        return "-" if value is None or math.isnan(value) else f"{value:.3f}"

    header = ["lesion"] + list(metrics)
    rows = [[f"{k} {LESION_NAMES[k]}"] + [cell(results[k][m]) for m in metrics] for k in lesions]
    rows.append(["mean"] + [cell(results.get(f"mean_{m}")) for m in metrics])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                       for i, (text, width) in enumerate(zip(row, widths))) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
