"""A grid's budget as each train script's overrides, and the checks a grid must pass before training.

The keys a script accepts are those of its ``CONFIG`` (plus the keys every run has, RUN_DEFAULTS), read by
importing the script (a train script imports without side effects; it trains only when run), so
a grid naming a key that does not exist fails before anything is trained.

How the scripts count steps (single process):
  train_classifier.py    floor(grading training images / batch) steps per epoch (full batches only)
  train_segmentation.py  ceil(segmentation training images / batch) steps per epoch; the last
                         batch is partial unless the batch divides the images, so the budget
                         requires that it does
  train_mlt_model.py     train.iterations steps per epoch, each one grading and one segmentation
                         batch; the budget sets train.iterations to the classifier's steps per
                         epoch, so an epoch of the multi-task model is one pass over the grading set
"""
import copy
import importlib
import sys
from pathlib import Path

from codebase.config import RUN_DEFAULTS
from codebase.data.idrid import grading_records, segmentation_records
from codebase.data.splits import validation_count
from codebase.errors import ProjectError
from experiments.grids import CLASSIFIER, MULTITASK, SEGMENTATION

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = (CLASSIFIER, SEGMENTATION, MULTITASK)
# Keys the runner itself sets on every run; a grid or --set must leave them alone.
RUNNER_KEYS = ("seed", "data.root", "run.name", "run.save_dir", "run.resume", "run.demo")


class GridError(ProjectError, ValueError):
    """A grid, budget or override that cannot give equal, valid runs; the message says which and why."""


def _dict_keys(values, prefix=""):
    """Dotted keys of a nested dict, sections included."""
    keys = set()
    for key, value in values.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _dict_keys(value, prefix + key + ".")
    return keys


def script_settings(script, name):
    """A train script's module-level ``name`` (CONFIG, DEMO), from the imported script."""
    path = REPO / script
    if path.suffix != ".py" or not path.is_file():
        raise GridError(f"train script {path} not found (expected one of {', '.join(SCRIPTS)})")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    module = importlib.import_module(path.stem)
    if not hasattr(module, name):
        raise GridError(f"{path}: no module-level {name}")
    return copy.deepcopy(getattr(module, name))


def config_keys(script):
    """Every dotted key `script`'s CONFIG (and RUN_DEFAULTS) accepts, sections included."""
    return _dict_keys(script_settings(script, "CONFIG")) | _dict_keys(RUN_DEFAULTS)


def override_key(assignment, where):
    key, separator, _ = assignment.partition("=")
    if not separator or not key.strip():
        raise GridError(f"{where}: {assignment!r} is not KEY=VALUE")
    return key.strip()


def check_overrides(script, assignments, where, budget_keys=()):
    """GridError unless every "key=value" names a key of `script`'s CONFIG that the runner or budget leaves free."""
    keys = config_keys(script)
    for assignment in assignments:
        key = override_key(assignment, where)
        if key not in keys:
            raise GridError(f"{where}: {script} CONFIG has no key {key!r} (in {assignment!r})")
        if key in RUNNER_KEYS or key in budget_keys:
            raise GridError(f"{where}: {key!r} is set by the experiment runner or the grid's budget "
                            "(same for every configuration); change the budget instead")


def training_images(root, validation=0):
    """(grading, segmentation) training image counts of the data root once ``validation`` images are
    carved from each (codebase.data.splits; no image is decoded)."""
    counts = len(grading_records(root, "train")), len(segmentation_records(root, "train"))
    return tuple(count - validation_count(validation, count, side)
                 for count, side in zip(counts, ("grading", "segmentation")))


def steps_per_epoch(script, batch_size, grading_images, segmentation_images):
    if batch_size > grading_images and script in (CLASSIFIER, MULTITASK):
        raise GridError(f"budget batch_size={batch_size}: more than the {grading_images} grading training images")
    if script == SEGMENTATION:
        if segmentation_images % batch_size:
            divisors = [d for d in range(1, segmentation_images + 1) if segmentation_images % d == 0]
            raise GridError(f"budget batch_size={batch_size} does not divide the {segmentation_images} segmentation "
                            f"training images, so {SEGMENTATION}'s last batch would be smaller and the runs would "
                            f"not see equal images; use one of {divisors}")
        return segmentation_images // batch_size
    return grading_images // batch_size


def _script_values(script, size, batch, per_epoch, epochs, validation=0.2):
    if script == CLASSIFIER:
        return {"data.image_size": size, "data.validation": validation, "train.batch_size": batch,
                "train.epochs": epochs, "train.evaluate_every": epochs}
    if script == SEGMENTATION:
        return {"data.image_size": size, "data.crop_size": size, "data.validation": validation,
                "train.batch_size": batch, "train.epochs": epochs, "train.evaluate_every": epochs}
    if script == MULTITASK:
        return {"data.grading_size": size, "data.segmentation_size": size, "data.crop_size": None,
                "data.validation": validation, "train.batch_size": batch, "train.iterations": per_epoch,
                "train.epochs": epochs, "train.evaluate_every": epochs}
    raise GridError(f"no budget rule for script {script!r}; known: {', '.join(SCRIPTS)}")


def budget_keys(script):
    """The keys the budget sets for `script`."""
    return tuple(_script_values(script, None, 1, 1, 1))


def budget_overrides(script, budget, grading_images, segmentation_images):
    """{key: value} that give `script` the budget's input size, batch and optimizer steps.

    Evaluation during training is left to the last epoch where the script has the knob (nothing
    is chosen on it; the final weights are what the runner evaluates).
    """
    per_epoch = steps_per_epoch(script, budget.batch_size, grading_images, segmentation_images)
    if budget.optimizer_steps % per_epoch:
        raise GridError(f"budget optimizer_steps={budget.optimizer_steps} is not a whole number of {script} epochs "
                        f"({per_epoch} steps each at batch {budget.batch_size} on this data); use a multiple of "
                        f"{per_epoch}")
    return _script_values(script, list(budget.image_size), budget.batch_size, per_epoch,
                          budget.optimizer_steps // per_epoch, budget.validation)


def check_grid(name, grid, common=()):
    """GridError naming the first problem of grid `name` (unknown script or key, bad reference or budget)."""
    if grid.reference not in grid.configurations:
        raise GridError(f"grid {name!r}: reference {grid.reference!r} is not one of its configurations "
                        f"({', '.join(grid.configurations)})")
    budget = grid.budget
    if min(budget.image_size) < 32 or budget.batch_size < 1 or budget.optimizer_steps < 1:
        raise GridError(f"grid {name!r}: {budget} needs an image size of at least 32x32 and a positive "
                        "batch size and step count")
    for config_name, configuration in grid.configurations.items():
        if configuration.script not in SCRIPTS:
            raise GridError(f"grid {name!r}, configuration {config_name!r}: script {configuration.script!r} is not "
                            f"one of {', '.join(SCRIPTS)}")
        check_upcycling(name, grid, config_name)
        for assignments, where in ((configuration.overrides, f"grid {name!r}, configuration {config_name!r}"),
                                   (grid.overrides, f"grid {name!r} (overrides for all configurations)"),
                                   (common, "--set")):
            check_overrides(configuration.script, assignments, where, budget_keys(configuration.script))


def configuration_steps(grid, configuration):
    """The optimizer steps one configuration's runs take: its own, else the grid's budget's."""
    return grid.budget.optimizer_steps if configuration.optimizer_steps is None else configuration.optimizer_steps


def check_upcycling(name, grid, config_name):
    """GridError unless a configuration's own steps fit the budget and its upcycling source is a multi-task
    configuration listed before it whose steps and its own add up to the budget's."""
    configuration, where = grid.configurations[config_name], f"grid {name!r}, configuration {config_name!r}"
    steps = configuration_steps(grid, configuration)
    if not 0 < steps <= grid.budget.optimizer_steps:
        raise GridError(f"{where}: optimizer_steps={steps}; expected 1 to the budget's {grid.budget.optimizer_steps}")
    source_name = configuration.upcycle_from
    if source_name is None:
        return
    names = list(grid.configurations)
    if source_name not in grid.configurations or names.index(source_name) > names.index(config_name):
        raise GridError(f"{where}: upcycle_from={source_name!r} is not a configuration listed before it "
                        f"({', '.join(names[:names.index(config_name)]) or 'none'})")
    source = grid.configurations[source_name]
    if configuration.script != MULTITASK or source.script != MULTITASK:
        raise GridError(f"{where}: upcycling needs two {MULTITASK} configurations; {source_name!r} runs {source.script}")
    total = steps + configuration_steps(grid, source)
    if total != grid.budget.optimizer_steps:
        raise GridError(f"{where}: its {steps} steps and {source_name!r}'s add up to {total}; the budget's "
                        f"{grid.budget.optimizer_steps} keep the comparison with training from scratch at equal steps")


def cli_text(value):
    """A Python value as --set text that parse_cli parses back to it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(cli_text(v) for v in value)
    return str(value)
