"""The names a run folder's history.json and test_metrics.json used before the three models shared
one vocabulary, and their upgrade to today's names (read by codebase.training.run_folder's
`read_history`, `read_test_metrics` and a resumed run's history)."""
import copy

from codebase.data.idrid import LESIONS

# The names history.json and test_metrics.json used before the three models shared one vocabulary,
# as key paths: {section: {old path: today's path}}. "train": a history entry's train section (the
# classifier's and DeepLabV3+'s loss components, today under "components" and named by task as
# the multi-task model names them); "evaluation": an evaluation's metrics (a history entry's
# validation or test section, test_metrics.json's metrics), where the classifier's grading
# metrics sat at the top level, today under "grading" as in the multi-task model.
RENAMED_METRICS = {
    "train": {
        ("loss_rg",): ("components", "loss_classification_rg"),
        ("loss_mer",): ("components", "loss_classification_mer"),
        ("loss_focal",): ("components", "loss_segmentation_focal"),
        ("loss_dice",): ("components", "loss_segmentation_dice"),
        **{("lesions", lesion, f"loss_{part}"): ("components", f"loss_segmentation_{lesion.lower()}_{part}")
           for lesion in LESIONS for part in ("focal", "dice")},
    },
    "evaluation": {
        **{(name,): ("grading", name) for name in
           [f"{grade}_{metric}" for grade in ("rg", "mer") for metric in ("accuracy", "kappa", "confusion", "recall")]},
        ("joint_accuracy",): ("grading", "joint_accuracy"),
    },
}
EVALUATION_SECTIONS = ("validation", "test", "eval")  # "eval": the validation section's earlier name


def upgrade_history(history):
    """A copy of a history (list of epoch entries) with the names RENAMED_METRICS lists in today's form."""
    if not isinstance(history, list):
        return history
    upgraded = copy.deepcopy(history)
    for entry in upgraded:
        if not isinstance(entry, dict):
            continue
        _rename(entry.get("train"), RENAMED_METRICS["train"])
        for section in EVALUATION_SECTIONS:
            _rename(entry.get(section), RENAMED_METRICS["evaluation"])
    return upgraded


def upgrade_test_metrics(results):
    """A copy of test_metrics.json's content with the names RENAMED_METRICS lists in today's form."""
    if not isinstance(results, dict):
        return results
    upgraded = copy.deepcopy(results)
    for which in ("last", "best"):
        if isinstance(upgraded.get(which), dict):
            _rename(upgraded[which].get("metrics"), RENAMED_METRICS["evaluation"])
    return upgraded


def _rename(section, renamed: dict) -> None:
    """Move each old key path found in `section` (a dict) to its new path, in place; a new path
    that already holds a value keeps it."""
    if not isinstance(section, dict):
        return
    for old, new in renamed.items():
        value = _pop_path(section, old)
        if value is _ABSENT:
            continue
        holder = section
        for key in new[:-1]:
            holder = holder.setdefault(key, {})
        holder.setdefault(new[-1], value)


_ABSENT = object()


def _pop_path(node, path: tuple):
    """Remove and return the value at key path `path` in nested dicts (a parent it leaves empty goes
    too), or _ABSENT."""
    head, *rest = path
    if not isinstance(node, dict) or head not in node:
        return _ABSENT
    if not rest:
        return node.pop(head)
    value = _pop_path(node[head], tuple(rest))
    if value is not _ABSENT and node[head] == {}:
        del node[head]
    return value
