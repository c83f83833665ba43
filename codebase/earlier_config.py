"""The config keys of earlier releases and their upgrade to today's, so that a run folder written
before still resumes and is compared as it was trained (codebase.training.run_folder, the grid
runner's stale-run check), and ``--set`` of an old key says what to write instead (codebase.config).
"""
import copy

# Keys earlier releases used -> (what replaced them, how an old value becomes the new setting's
# entries, an old value for the example in the error). A run folder written before is upgraded
# when it resumes; --set of an old key is an error that says what to write instead.
RENAMED_KEYS = {
    "loss.rg_weight": ("loss.task_weights", lambda weight: {"classification_rg": weight}, 2.0),
    "loss.mer_weight": ("loss.task_weights", lambda weight: {"classification_mer": weight}, 2.0),
    "loss.lesion_weights": ("loss.task_weights", lambda weights: {f"segmentation_{lesion.lower()}": weight
                                                                  for lesion, weight in weights.items()},
                            {"MA": 2.0}),
}

# Multi-task model settings added later -> the value that gives the model runs written before them had,
# filled into an earlier checkpoint's config so that such a run still resumes.
ADDED_MULTITASK_KEYS = {"model.shared_experts": 0, "model.expert_pool": "task", "model.init_from": None,
                        "routing.gate_input": "high", "routing.granularity": "image", "routing.router": "linear",
                        "routing.region_grid": [4, 6]}  # the grid matters only at granularity "region"


def upgrade_config(config: dict) -> dict:
    """A copy of a config written by an earlier release with its renamed keys in today's form
    (RENAMED_KEYS; entries merged into the new setting, which keeps what it already says; a weight
    of 1, what an unlisted task weighs, is left out)."""
    upgraded = copy.deepcopy(config)
    for old, (new, convert, _) in RENAMED_KEYS.items():
        (section, leaf), (new_section, new_leaf) = old.split("."), new.split(".")
        holder = upgraded.get(section)
        if not isinstance(holder, dict) or leaf not in holder:
            continue
        target = upgraded.setdefault(new_section, {})
        entries = {task: weight for task, weight in convert(holder.pop(leaf)).items() if weight != 1.0}
        target[new_leaf] = {**entries, **(target.get(new_leaf) or {})}
    model = upgraded.get("model")
    if isinstance(model, dict) and "task_specs" in model:
        for key, value in ADDED_MULTITASK_KEYS.items():
            section, leaf = key.split(".")
            if isinstance(upgraded.get(section), dict):
                upgraded[section].setdefault(leaf, copy.deepcopy(value))
    return upgraded
