"""Does routing follow the input? The mutual information between an image's expert and what it is.

For each task, the expert an image is given to (its largest routing weight, the expert that weighs
most in its output) is counted against a label of the image (the camera profile that took it, its
retinopathy grade) in a joint count table, and the mutual information is the plug-in estimate from
that table, in nats:

    I(label; expert) = sum_ij p_ij log(p_ij / (p_i. p_.j)),   p_ij = n_ij / n.

0: the expert says nothing about the label; log K (K = min(distinct labels, experts)) at most, when
each label goes to an expert of its own and the K values are equally frequent. "*_mi_normalised"
divides by that log K. With few images the plug-in estimate is biased upwards by about
(rows - 1)(columns - 1) / (2 n) nats (Miller 1955), over the rows and columns with any image, so
a small MI from a small split is not evidence that routing follows the label.
"""
import math

import numpy as np
import torch

LABELS = ("camera", "grade")  # what routing's mutual information is measured against
GRADE_CLASSES = 5  # retinopathy grades 0-4 (IDRiD's RG)
NO_CAMERA = "no camera is known for these images (their data root has no synthetic.json listing them)"
NO_GRADE = "these images carry no retinopathy grade (IDRiD's segmentation images are not graded)"


def contingency(a, b) -> np.ndarray:
    """Joint count table [distinct a, distinct b] of two equally long label sequences."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two label sequences of one length, got shapes {a.shape} and {b.shape}")
    _, rows = np.unique(a, return_inverse=True)
    _, columns = np.unique(b, return_inverse=True)
    table = np.zeros((rows.max(initial=-1) + 1, columns.max(initial=-1) + 1), np.int64)
    np.add.at(table, (rows, columns), 1)
    return table


def table_information(table) -> float:
    """Plug-in mutual information (nats) of a joint count table [rows, columns]; 0 for an empty one."""
    table = np.asarray(table, dtype=np.float64)
    total = table.sum()
    if total == 0:
        return 0.0
    joint = table / total
    rows, columns = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    kept = joint > 0
    value = float(np.sum(joint[kept] * np.log(joint[kept] / (rows @ columns)[kept])))
    return value if value > 1e-12 else 0.0  # rounding error of an independent table is no information


def mutual_information(a, b) -> float:
    """Plug-in mutual information (nats) between two equally long label sequences."""
    return table_information(contingency(a, b))


def information_summary(table, name: str) -> dict:
    """{"<name>_mi": nats, "<name>_mi_normalised": divided by log K (absent where K < 2),
    "<name>_mi_images": images counted, "<name>_mi_bias": the plug-in bias (rows - 1)(columns - 1)/(2n)}
    of a joint count table [label values, experts]."""
    table = np.asarray(table)
    images = int(table.sum())
    rows, columns = int((table.sum(axis=1) > 0).sum()), int((table.sum(axis=0) > 0).sum())
    k = min(rows, table.shape[1])
    summary = {f"{name}_mi": table_information(table), f"{name}_mi_images": images,
               f"{name}_mi_bias": (rows - 1) * (columns - 1) / (2 * images)}
    if k > 1:
        summary[f"{name}_mi_normalised"] = summary[f"{name}_mi"] / math.log(k)
    return summary


class RoutingInformationMeter:
    """Per task and label, the joint counts of (label value, expert given the image) over a split.

    labels: {label name: number of values}, e.g. {"camera": 3, "grade": 5}; absent: {label name:
    why it may be unknown}, for every label to report, measured (in ``labels``) or not. update()
    takes each batch's label codes, int64 [B] with -1 where an image's value is unknown (not
    counted). compute() -> {task: per label information_summary(), or {"<label>_mi_absent": reason}
    where no image had a known value}.
    """

    def __init__(self, labels: dict[str, int], absent: dict[str, str]):
        self.labels, self.absent = labels, absent
        self.tables = {}  # (task, label) -> int64 [values, E], on the routing's device
        self.tasks = set()

    def update(self, routings, codes: dict[str, torch.Tensor]):
        for task, routing in routings.items():
            self.tasks.add(task)
            mixture = routing.mixture.detach()
            experts = mixture.shape[1]
            chosen = mixture.argmax(dim=-1)  # [B], the expert weighing most in each image's output
            cells = getattr(routing, "cells", 1)  # region routing: [B * cells] choices, each cell an item
            for label, values in self.labels.items():
                code = codes[label].to(mixture.device)
                if cells > 1:
                    code = code.repeat_interleave(cells)
                known = (code >= 0) & (code < values)  # a value outside the table is unknown too
                flat = (code.clamp_min(0) * experts + chosen)[known]
                counts = torch.bincount(flat, minlength=values * experts)[:values * experts].view(values, experts)
                total = self.tables.get((task, label))
                self.tables[(task, label)] = counts if total is None else total + counts

    def state_tensors(self):
        return [self.tables[key] for key in sorted(self.tables)]

    def compute(self):
        result = {}
        for task in sorted(self.tasks):
            entry = result.setdefault(task, {})
            for label, reason in self.absent.items():
                table = self.tables.get((task, label))
                table = None if table is None else table.cpu().numpy()
                entry.update(information_summary(table, label) if table is not None and table.sum()
                             else {f"{label}_mi_absent": reason})
        return result
