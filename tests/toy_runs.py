"""Runs of the toy train script (tests/harness_toy.py) that the loop, run-folder, stopping and
distributed tests share: its config, its command line, and what a finished run holds."""
import json
import sys
from pathlib import Path

import harness_toy
import torch

from codebase.config import set_value, with_defaults

TOY_SCRIPT = Path(harness_toy.__file__)
REPO = TOY_SCRIPT.parents[1]


def toy_config(save_dir, **settings) -> dict:
    """The toy script's config with save_dir and `settings` ({"train__epochs": 2} = train.epochs)."""
    config = with_defaults(harness_toy.CONFIG)
    config["run"]["save_dir"] = str(save_dir)
    for key, value in settings.items():
        set_value(config, key.replace("__", "."), value)
    return config


def final_state(folder: Path):
    weights = torch.load(folder / "model.pth", weights_only=True)
    history = json.loads((folder / "history.json").read_text())
    return weights, [{key: value for key, value in entry.items() if key != "time"} for entry in history]


def assert_same_run(folder: Path, reference):
    weights, history = final_state(folder)
    expected_weights, expected_history = reference
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, expected_weights[name]), name
    assert history == expected_history


def snapshot(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def toy_command(save_dir, *settings):
    command = [sys.executable, str(TOY_SCRIPT), "--set", f"run.save_dir={save_dir}"]
    for setting in settings:
        command += ["--set", setting]
    return command
