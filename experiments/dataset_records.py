"""Per-image records of a trained run on any labelled dataset (codebase.data.formats), the form
experiments.analysis turns into metrics of the set and of its bootstrap resamples.

Only what both the run predicts and the set's labels allow is recorded: ``rg`` and ``mer`` from the
run's RG and MER heads; ``dme`` (referable DME, 0/1) from its MER head, predicted 1 when the most
likely MER is 2 (codebase.data.formats.base.dme_from_mer); each lesion the run segments and the set
has masks for. Grading images are resized to the run's trained grading size. Lesion maps are
predicted image by image as predict.py does (inference.predictor.segmentation_plan, sliding
``auto``: windows of the trained size over a larger working image when the photograph is large
enough) and scored at the working size against the masks resized to it.
"""
import math
from collections import Counter

import numpy as np
import torch

from codebase.data.cache import load_resized_mask
from codebase.data.formats.base import GRADE_KEYS, LabelledSet
from codebase.data.idrid import LESIONS
from codebase.data.images import read_size
from codebase.evaluation.metrics import SegmentationMeter
from codebase.runtime.device import autocast
from codebase.runtime.progress import progress
from experiments.records import HISTOGRAM_BINS, image_record, pack_segmentation_records
from inference.predictor import DEFAULT_SCALE, load_input, segmentation_plan, sliding_probabilities

# The run's task whose head predicts each grading key, and how its class becomes the key's label.
GRADE_HEADS = {"rg": ("rg", lambda classes: classes), "mer": ("mer", lambda classes: classes),
               "dme": ("mer", lambda classes: (classes == 2).long())}


def scored_tasks(run, labelled: LabelledSet) -> tuple[list[str], list[str], dict[str, str]]:
    """(grading keys, lesions) both the run predicts and the set can score, and {task key: why not
    scored} for every other task key."""
    heads = {task.key for task in run.tasks("grading")}
    segments = {task.key for task in run.tasks("segmentation")}
    grades, lesions, absent = [], [], {}
    for key in GRADE_KEYS:
        if key in labelled.absent or key not in labelled.grades:
            absent[key] = labelled.absent.get(key, f"{labelled.format} has no {key} label")
        elif GRADE_HEADS[key][0] not in heads:
            absent[key] = f"the run ({run.kind}) has no {GRADE_HEADS[key][0].upper()} head"
        else:
            grades.append(key)
    for lesion in LESIONS:
        if lesion in labelled.absent or lesion not in labelled.lesions:
            absent[lesion] = labelled.absent.get(lesion, f"{labelled.format} has no {lesion} masks")
        elif lesion not in segments:
            absent[lesion] = f"the run ({run.kind}) does not segment {lesion}"
        else:
            lesions.append(lesion)
    return grades, lesions, absent


@torch.no_grad()
def grading_records(run, records, keys, device, batch_size):
    """{"names": [N], "<key>_true": int64 [N], "<key>_predicted": int64 [N]} for the grading ``keys``."""
    size = run.input_sizes()["grading"]
    names, true, predicted = [], {key: [] for key in keys}, {key: [] for key in keys}
    tasks = {task.key: task for task in run.tasks("grading")}
    for start in progress(range(0, len(records), batch_size), "records grading",
                          total=math.ceil(len(records) / batch_size)):
        chunk = records[start:start + batch_size]
        images = torch.cat([load_input(record.image_path, size) for record in chunk]).to(device)
        with autocast(device, run.config["train"]["amp"]):
            logits = run.predict(images, side="grading")["logits"]
        for key in keys:
            head, to_label = GRADE_HEADS[key]
            classes = logits[tasks[head].name].float().argmax(dim=1).cpu()
            predicted[key].append(to_label(classes).numpy())
            true[key] += [record.grade(key) for record in chunk]
        names += [record.name for record in chunk]
    result = {"names": np.array(names)}
    for key in keys:
        result[f"{key}_true"] = np.array(true[key], np.int64)
        result[f"{key}_predicted"] = np.concatenate(predicted[key]).astype(np.int64)
    return result


@torch.no_grad()
def segmentation_records(run, records, lesions, device, threshold=0.5, sliding="auto", scale=DEFAULT_SCALE):
    """(records as experiments.records.segmentation_records for ``lesions``, {"whole": n, "sliding": n,
    "working_sizes": [[h, w], ...]}: how the images were predicted)."""
    tasks = run.tasks("segmentation")
    channels = [[task.key for task in tasks].index(lesion) for lesion in lesions]
    meter = SegmentationMeter(lesions, threshold=threshold, bins=HISTOGRAM_BINS)
    counts, sparse, plans, sizes = [], [], Counter(), []
    for record in progress(records, "records lesions", total=len(records)):
        width, height = read_size(record.image_path)
        plan = segmentation_plan(run, (height, width), sliding, scale)
        image = load_input(record.image_path, plan.working_size).to(device)  # [1, 3, h, w]
        with autocast(device, run.config["train"]["amp"]):
            if plan.mode == "sliding":
                probs, _ = sliding_probabilities(run, image, plan)  # [1, T, h, w]
            else:
                logits = run.predict(image, side="segmentation")["logits"]
                probs = torch.cat([torch.sigmoid(logits[task.name].float()) for task in tasks], dim=1)
        masks = np.zeros((1, len(lesions), *plan.working_size), np.uint8)
        for index, lesion in enumerate(lesions):
            path = record.mask_paths.get(lesion)
            if path is not None:
                masks[0, index] = load_resized_mask(path, plan.working_size, (width, height),
                                                    record.mask_thresholds.get(lesion, 1))
        count, histogram = image_record(meter, probs[:, channels].float(), torch.from_numpy(masks).to(probs.device))
        counts.append(count)
        sparse.append(histogram)
        plans[plan.mode] += 1
        if list(plan.working_size) not in sizes:
            sizes.append(list(plan.working_size))
    return (pack_segmentation_records([r.name for r in records], lesions, counts, sparse),
            {"whole": plans["whole"], "sliding": plans["sliding"], "working_sizes": sizes})


def dataset_records(run, labelled: LabelledSet, device, threshold=0.5, sliding="auto", batch_size=None):
    """{"grading": records or None, "segmentation": records or None, "absent": {key: reason},
    "images": {"grading": n, "segmentation": n}, "plan": ... or None} of the set's evaluated images."""
    grades, lesions, absent = scored_tasks(run, labelled)
    evaluated = labelled.evaluation_records()
    graded = [r for r in evaluated if any(r.grade(key) is not None for key in grades)]
    annotated = [r for r in evaluated if r.mask_paths is not None]
    result = {"grading": None, "segmentation": None, "absent": absent, "plan": None,
              "images": {"grading": len(graded) if grades else 0, "segmentation": len(annotated) if lesions else 0}}
    if grades and graded:
        keys = [key for key in grades if all(r.grade(key) is not None for r in graded)]
        result["grading"] = grading_records(run, graded, keys, device,
                                            batch_size or run.config["train"]["eval_batch_size"])
    if lesions and annotated:
        result["segmentation"], result["plan"] = segmentation_records(run, annotated, lesions, device, threshold,
                                                                      sliding)
    return result
