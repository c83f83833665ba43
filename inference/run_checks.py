"""The files of a run folder, read with their failures named: config.json and a weights file.

`read_config` and `read_weights` raise RunError saying which file is wrong and how (not JSON, not
an object, empty, truncated, a training checkpoint instead of weights). `weights_kind` tells from
the parameter names which of the three models a state dict belongs to, so weights of another
kind are reported as such instead of as a list of missing keys.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from codebase.errors import ProjectError


class RunError(ProjectError):
    """A run folder that cannot be rebuilt; the message names the folder and what was expected."""


# The top-level modules of each model's state dict (classifier/model.py, segmentation/model.py, codebase/model.py).
_MODULES = {"classifier": {"backbone", "heads"}, "segmentation": {"backbone", "aspp", "decoder"},
            "multitask": {"backbone", "aspp", "experts", "gates"}}
_SCRIPTS = {"classifier": "train_classifier.py", "segmentation": "train_segmentation.py",
            "multitask": "train_mlt_model.py"}
_RUN_EXPECTED = ("expected a finished run folder written by train_classifier.py, train_segmentation.py "
                 "or train_mlt_model.py")


def read_config(path: Path) -> dict:
    """config.json as a dict; RunError when it is absent, not JSON or not a JSON object."""
    if not path.is_file():
        raise RunError(f"{path} not found: {_RUN_EXPECTED}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise RunError(f"{path}: not valid JSON ({error}); {_RUN_EXPECTED}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        found = type(config).__name__ if not isinstance(config, dict) else "an object without a 'model' section"
        raise RunError(f"{path}: holds {found}, expected the JSON object of a run's settings (with a 'model' "
                       "section) as the train scripts write it")
    return config


def read_weights(path: Path) -> dict:
    """A state dict {name: tensor} from a weights file (weights_only: it cannot run code)."""
    if not path.is_file():
        raise RunError(f"{path} not found: {_RUN_EXPECTED}")
    if path.stat().st_size == 0:
        raise RunError(f"{path}: empty file (0 bytes), expected the model's weights; the run did not finish "
                       "writing them: resume it, or use the other weights file (--weights last/best)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, not a torch file at all
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"{path}: not a readable weights file ({detail}); expected a state dict saved by a "
                       "train script") from None
    if isinstance(state, dict) and {"epoch", "model", "config"} <= state.keys():
        raise RunError(f"{path}: a training checkpoint, not a model's weights; expected the state dict that "
                       "model.pth/best.pth hold (the checkpoint's 'model' entry)")
    if not (isinstance(state, dict) and state and all(isinstance(value, torch.Tensor) for value in state.values())):
        raise RunError(f"{path}: holds a {type(state).__name__} that is not a state dict of tensors; expected "
                       "the weights saved by a train script")
    return state


def weights_kind(state: dict) -> str | None:
    """"classifier", "segmentation" or "multitask" from the state dict's top-level module names, or None."""
    modules = {name.split(".", 1)[0] for name in state}
    for kind, expected in _MODULES.items():
        if modules == expected:
            return kind
    return None


def check_weights_match(path: Path, state: dict, kind: str) -> None:
    """RunError when ``state`` is recognisably the weights of another model kind than ``kind``."""
    found = weights_kind(state)
    if found is not None and found != kind:
        raise RunError(f"{path}: these are the weights of a {found} run ({_SCRIPTS[found]}), but "
                       f"{path.parent / 'config.json'} describes a {kind} run ({_SCRIPTS[kind]}); expected "
                       f"the weights of that {kind}: the files of two runs were mixed")
