"""The settings the three train scripts share, each with its rule.

A train script validates its config once, before anything runs: `check_settings(config, RULES)`
with RULES = COMMON_RULES plus its own, then the checks that relate several settings. Every
setting of a script's CONFIG has a rule (tests check that none is left out).

Each setting also has its rule on --resume (codebase.config.MAY_CHANGE or FIXES_THE_RUN):
COMMON_RESUME_RULES for these, each script's RESUME_RULES for its own (tests check every setting
of every script is covered, and that the rule holds).
"""
from codebase.config import (
    BOOLEAN,
    FIXES_THE_RUN,
    MAY_CHANGE,
    RUN_RESUME_RULES,
    TEXT,
    Rule,
    choice,
    integer,
    number,
    optional,
)
from codebase.networks.backbones import BACKBONES
from codebase.runtime.device import AMP_SETTINGS
from codebase.training.optim import SCHEDULES


def task_weights_rule(task_names) -> Rule:
    """The rule of ``loss.task_weights``, {task: weight} over some of ``task_names`` (unlisted: 1)."""
    names = tuple(task_names)
    return Rule(lambda weights: (isinstance(weights, dict) and set(weights) <= set(names)
                                 and all(number(0).check(weight) for weight in weights.values())),
                f"a {{task: number >= 0}} mapping over tasks of {', '.join(names)} (unlisted tasks weigh 1)")


RUN_NAME = Rule(lambda name: (isinstance(name, str) and name.strip() not in ("", ".", "..")
                              and not any(sep in name for sep in "/\\")),
                "a folder name (not empty, '.' or '..', without / or \\)")

COMMON_RULES = {
    "seed": integer(0, 2**32 - 1),
    "device": TEXT,
    "deterministic": BOOLEAN,
    "run.name": RUN_NAME,
    "run.save_dir": TEXT,
    "run.resume": optional(BOOLEAN),
    "run.demo": BOOLEAN,
    "run.plots": BOOLEAN,
    "run.tensorboard": BOOLEAN,
    "data.root": TEXT,
    "data.cache_dir": optional(TEXT),
    "data.num_workers": integer(0),
    "data.pin_memory": BOOLEAN,
    "model.backbone": choice(*BACKBONES),
    "model.pretrained": Rule(lambda value: isinstance(value, str) and value != "",
                             "'imagenet', 'none' or the path of a local state dict"),
    "optim.lr": number(0, low_open=True),
    "optim.backbone_lr": number(0),
    "optim.weight_decay": number(0),
    "schedule.kind": choice(*SCHEDULES),
    "schedule.step_size": integer(1),
    "schedule.gamma": number(0, low_open=True),
    "train.epochs": integer(1),
    "train.batch_size": integer(1),
    "train.eval_batch_size": integer(1),
    "train.amp": choice(*AMP_SETTINGS),
    # --set data.validation=7 arrives as 7.0 (the default is a fraction): a whole float counts images
    "data.validation": Rule(lambda size: ((isinstance(size, float) and (0 <= size < 1 or (size >= 1 and size.is_integer())))
                                          or (isinstance(size, int) and not isinstance(size, bool) and size >= 0)),
                            "a fraction in [0, 1) or a whole number of images >= 0 (0: no validation split)"),
    "train.evaluate_on": choice("validation", "test"),
    "train.evaluate_every": integer(1),
    "train.monitor": TEXT,
    "train.patience": integer(0),
}


# On --resume. May change (applied for real): where and how the run computes and what it writes
# besides the weights (device, workers, cache, AMP, evaluation batch and frequency, plots, where the
# data lies as long as it splits into the run's images), the
# optimizer and its schedule (the restored optimizer keeps its moments and takes today's rates,
# codebase.training.optim.restore_training_state), the epochs and the patience. Fixes the run:
# the model, the data (root, validation split, sizes), the seed, the losses and their weights, the
# batch, what is evaluated and monitored (best.pth compares scores of one kind on one split).
COMMON_RESUME_RULES = {
    **RUN_RESUME_RULES,
    "kind": FIXES_THE_RUN,
    "model": FIXES_THE_RUN,
    "data": FIXES_THE_RUN,
    "data.root": MAY_CHANGE,  # the data may move; a resumed run's split must still be its splits.json (Run.save_splits)
    "data.cache_dir": MAY_CHANGE,
    "data.num_workers": MAY_CHANGE,
    "data.pin_memory": MAY_CHANGE,
    "loss": FIXES_THE_RUN,
    "optim": MAY_CHANGE,
    "schedule": MAY_CHANGE,
    "train": FIXES_THE_RUN,
    "train.epochs": MAY_CHANGE,
    "train.eval_batch_size": MAY_CHANGE,
    "train.amp": MAY_CHANGE,
    "train.evaluate_every": MAY_CHANGE,
    "train.patience": MAY_CHANGE,
}
