"""Model selection on the validation split: the monitored score, the best epoch, early stopping.

``train.monitor`` names the score (higher is better): "mean_primary", the mean over the run's
tasks of each task's primary score (quadratic weighted kappa for a grading task, AUPR for a
lesion), or a dotted path into the evaluation metrics ("grading.rg_kappa",
"segmentation.mean_aupr", "rg_accuracy"). ``train.patience`` > 0 stops training after that many
evaluations without a better score.
"""
import math

from codebase.config import ConfigError, is_number

MEAN_PRIMARY = "mean_primary"


def primary_score(metrics: dict, task) -> float | None:
    """A task's primary score in an evaluation's metrics, or None when the metrics lack it.

    Grading metrics sit under "grading" as "<key>_<metric>" ("rg_kappa"), lesion metrics under
    "segmentation" -> <KEY> -> <metric>, in every model's evaluation.
    """
    metric = task.kind.primary_metric
    if metric is None:
        return None
    if task.side == "grading":
        value = metrics.get("grading", {}).get(f"{task.key}_{metric}")
    else:
        value = metrics.get("segmentation", {}).get(task.key, {}).get(metric)
    return float(value) if is_number(value) and math.isfinite(value) else None


def monitor_value(metrics: dict, monitor: str, tasks) -> float | None:
    """The monitored score of an evaluation, or None when it cannot be computed (no metrics,
    a task's score undefined). ConfigError when a dotted path names nothing in the metrics."""
    if not metrics:
        return None
    if monitor == MEAN_PRIMARY:
        scores = [primary_score(metrics, task) for task in tasks]
        scores = [score for score in scores if score is not None]
        return sum(scores) / len(scores) if scores else None
    value = metrics
    for part in monitor.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"train.monitor={monitor!r}: the evaluation has no {part!r} there; expected "
                              f"{MEAN_PRIMARY!r} or a dotted path into its metrics, e.g. grading.rg_kappa")
        value = value[part]
    if not is_number(value):
        raise ConfigError(f"train.monitor={monitor!r}: names {value!r}, expected a number")
    return float(value) if math.isfinite(value) else None


class Selection:
    """Tracks the best monitored score and the evaluations since it improved; checkpoints with the run."""

    def __init__(self, monitor=None, patience: int = 0):
        """monitor: metrics -> score or None (see monitor_value); None never selects (last = best)."""
        self.monitor, self.patience = monitor, patience
        self.best_epoch, self.best_score, self.evaluations_without_gain, self.stopped_early = None, None, 0, False

    def update(self, epoch: int, metrics: dict) -> float | None:
        """Record an evaluation; return its score. ``improved`` says whether it is the new best."""
        self.improved = False
        score = self.monitor(metrics) if self.monitor is not None and metrics else None
        if score is None:
            return None
        if self.best_score is None or score > self.best_score:
            self.best_epoch, self.best_score, self.evaluations_without_gain = epoch, score, 0
            self.improved = True
        else:
            self.evaluations_without_gain += 1
            self.stopped_early = bool(self.patience) and self.evaluations_without_gain >= self.patience
        return score

    def state_dict(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_score": self.best_score,
                "evaluations_without_gain": self.evaluations_without_gain, "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict) -> None:
        self.best_epoch, self.best_score = state["best_epoch"], state["best_score"]
        self.evaluations_without_gain = state["evaluations_without_gain"]
        # train.patience may change on resume: today's patience decides whether training has stopped
        self.stopped_early = bool(self.patience) and self.evaluations_without_gain >= self.patience


def make_selection(train_config: dict, tasks) -> Selection:
    """The Selection the run's train.monitor and train.patience ask for, over ``tasks``."""
    monitor = train_config["monitor"]
    return Selection(lambda metrics: monitor_value(metrics, monitor, tasks), train_config["patience"])


def evaluation_plan(train_config: dict, evaluate_split, has_validation: bool):
    """(evaluate(epoch), split name, test()) for fit.

    ``evaluate_split(split)`` evaluates the current weights on "validation" or "test". Every
    train.evaluate_every epochs (and after the last) the model is evaluated on train.evaluate_on:
    "validation" (the default; nothing when the run has no validation split) or, as an explicit
    choice, "test", which every output then labels as test. The test split is evaluated once at
    the end either way (test()).
    """
    split, every, epochs = train_config["evaluate_on"], train_config["evaluate_every"], train_config["epochs"]

    def evaluate(epoch):
        if (epoch % every and epoch != epochs) or (split == "validation" and not has_validation):
            return {}
        return evaluate_split(split)

    return evaluate, split, lambda: evaluate_split("test")
