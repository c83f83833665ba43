"""A trained run folder back as a model: rebuild it from config.json, load model.pth.

Used by predict.py, compare_models.py, export.py and the notebooks. This package sits above the
three model packages: `MODEL_KINDS` maps the kind a run's config records (``config["kind"]``) to
its package's ``build_model``, ``predict`` and tasks, so the shared core never imports a
baseline. Every model is seen through the same ``predict(images)``, returning
``{"logits": {task: tensor}, "routing": {task: Routing}}`` (routing for the multi-task model only),
with task names as in the multi-task model (``classification_rg``, ``segmentation_od``, ...).
"""
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import classifier.model
import codebase.model
import segmentation.model
from codebase.tasks import on_side, parse_tasks
from codebase.training.run_folder import BEST_MODEL_FILE, CONFIG_FILE, MODEL_FILE
from inference.run_checks import (
    RunError,
    check_weights_match,
    read_config,
    read_weights,
)


@dataclass(frozen=True)
class ModelKind:
    """What rebuilding and using one kind of run needs: its builder, its predict, its tasks."""

    build: Callable[[dict], torch.nn.Module]
    predict: Callable
    tasks: Callable[[dict], list]  # config -> [Task]
    input_sizes: Callable[[dict], dict]  # config -> {side: (height, width)} the images were trained at
    script: str


MODEL_KINDS = {
    "classifier": ModelKind(classifier.model.build_model, classifier.model.predict,
                            lambda config: classifier.model.TASKS,
                            lambda config: {"grading": tuple(config["data"]["image_size"])}, "train_classifier.py"),
    "segmentation": ModelKind(segmentation.model.build_model, segmentation.model.predict,
                              lambda config: segmentation.model.TASKS,
                              lambda config: {"segmentation": tuple(config["data"]["image_size"])}, "train_segmentation.py"),
    "multitask": ModelKind(codebase.model.build_model, codebase.model.predict,
                           lambda config: parse_tasks(config["model"]["task_specs"]),
                           lambda config: {"grading": tuple(config["data"]["grading_size"]),
                                           "segmentation": tuple(config["data"]["segmentation_size"])},
                           "train_mlt_model.py"),
}


def run_kind(config):
    """The model kind a run's config records; runs written before the kind was recorded are
    recognised by their model settings (the multi-task model has ``model.task_specs``, DeepLabV3+
    ``model.output_stride``, the classifier neither)."""
    if "kind" in config:
        if config["kind"] not in MODEL_KINDS:
            raise RunError(f"config kind={config['kind']!r}: expected one of {', '.join(MODEL_KINDS)}")
        return config["kind"]
    model = config.get("model", {})
    if "task_specs" in model:
        return "multitask"
    return "segmentation" if "output_stride" in model else "classifier"


def build_model(config, pretrained=None):
    """The model a run's config describes; ``pretrained`` overrides model.pretrained."""
    if pretrained is not None:
        config = {**config, "model": {**config["model"], "pretrained": pretrained}}
    return MODEL_KINDS[run_kind(config)].build(config)


@dataclass
class TrainedRun:
    folder: Path
    kind: str
    config: dict
    model: torch.nn.Module
    weights_file: str = MODEL_FILE  # which weights were loaded: best.pth or model.pth

    @property
    def all_tasks(self):
        """[Task] this run predicts."""
        return MODEL_KINDS[self.kind].tasks(self.config)

    @property
    def task_specs(self):
        """{task name: outputs} this run predicts."""
        return {task.name: task.outputs for task in self.all_tasks}

    def tasks(self, side):
        """This run's Tasks on one side ("grading" or "segmentation")."""
        return on_side(self.all_tasks, side)

    def input_sizes(self):
        """{side: (height, width)} the run's images were trained at, for the sides it predicts."""
        return MODEL_KINDS[self.kind].input_sizes(self.config)

    def predict(self, images, side="all", dense=False):
        """images [B, 3, H, W] -> {"logits": {task: ...}, "routing": {...}} for the tasks on ``side``."""
        return MODEL_KINDS[self.kind].predict(self.model, images, side, dense)


WEIGHTS = ("best", "last")


def weights_file(folder, weights="best"):
    """The weights file of a finished run: best.pth (the checkpoint chosen on the validation split)
    for "best", falling back to model.pth (the last epoch's) where no best.pth was written (a run
    without validation, or one written before model selection existed); model.pth for "last"."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: expected one of {', '.join(WEIGHTS)}")
    folder = Path(folder)
    if weights == "best" and (folder / BEST_MODEL_FILE).is_file():
        return folder / BEST_MODEL_FILE
    return folder / MODEL_FILE


def load_run(folder, device="cpu", weights="best"):
    """The run in ``folder`` (saved/<name>/) with its best (or last) weights, in eval mode on ``device``."""
    folder = Path(folder)
    path = weights_file(folder, weights)
    config = read_config(folder / CONFIG_FILE)
    kind = run_kind(config)
    model = build_model(config, pretrained="none")  # the trained weights replace any pretrained ones
    state = read_weights(path)
    check_weights_match(path, state, kind)
    model.load_state_dict(state)
    return TrainedRun(folder, kind, config, model.to(device).eval(), path.name)


def open_run(folder, device="cpu", weights="best"):
    """load_run, with every way a folder can fail to be a run turned into a RunError naming it."""
    folder = Path(folder)
    try:
        return load_run(folder, device, weights)
    except FileNotFoundError as error:
        raise RunError(str(error)) from None
    except json.JSONDecodeError as error:
        raise RunError(f"{folder / CONFIG_FILE}: not valid JSON ({error})") from None
    except (KeyError, TypeError, AttributeError) as error:
        raise RunError(f"{folder / CONFIG_FILE}: no usable setting {error}; expected the config of a run written by "
                       "train_classifier.py, train_segmentation.py or train_mlt_model.py") from None
    except (ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"{folder}: cannot rebuild the model from config.json and model.pth ({detail})") from None
