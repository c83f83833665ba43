"""Adding a loss weighting is one new module in codebase/training/weighting/ and nothing else: the
train script's CONFIG, its setting rules and the registry find it, and ``--set`` configures it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs a train script in a subprocess

REPO = Path(__file__).resolve().parents[3]

NEW_METHOD = '''"""Every task's loss times one factor (a method written for the test that adds one)."""
import torch

from codebase.training.weighting.base import Weighting
from codebase.training.weighting.registry import Setting, positive, register


@register("scaled_sum")
class ScaledSum(Weighting):
    """factor * sum_t L_t."""

    setting_prefix = "scaled_sum_"
    settings = {"factor": Setting(1.0, float, positive, "> 0")}

    def __init__(self, tasks, factor=1.0):
        super().__init__(tasks)
        self.factor = factor

    def combine(self, losses):
        indices = self.present(losses)
        return self.weighted_sum(losses, indices, torch.full((len(indices),), self.factor))
'''


def test_a_method_added_as_one_file_trains_with_its_own_setting(synthetic_root, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "codebase", tree / "codebase", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "train_mlt_model.py", tree)
    (tree / "codebase" / "training" / "weighting" / "scaled_sum.py").write_text(NEW_METHOD)
    settings = ["data.grading_size=64,96", "data.segmentation_size=64,96", "model.aspp_channels=16",
                "model.decoder_channels=16", "model.head_hidden=16", "train.epochs=2", "train.iterations=2",
                "train.batch_size=2", "train.eval_batch_size=8", "train.fullres_eval=off", "run.plots=false",
                "run.tensorboard=false", f"run.save_dir={tmp_path / 'saved'}",
                "loss.weighting=scaled_sum", "loss.scaled_sum_factor=0.5"]
    command = [sys.executable, "train_mlt_model.py", "--demo", "--data-root", str(synthetic_root), "--run-name", "new",
               *[arg for item in settings for arg in ("--set", item)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(tree)}
    finished = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    run = tmp_path / "saved" / "new"
    loss_config = json.loads((run / "config.json").read_text())["loss"]
    assert loss_config["scaled_sum_factor"] == 0.5
    history = json.loads((run / "history.json").read_text())
    for entry in history:
        train = entry["train"]
        assert set(train["task_weights"].values()) == {0.5}
        task_losses = sum(value for key, value in train["components"].items()
                          if key.startswith("loss_") and key.count("_") == 2 and not key.startswith("loss_gate_"))
        gate = sum(loss_config[key.removeprefix("loss_")] * value  # the regularisers at their own weights
                   for key, value in train["components"].items() if key.startswith("loss_gate_"))
        assert train["loss"] > 0 and train["loss"] == pytest.approx(0.5 * task_losses + gate, rel=1e-5)
    # The setting is checked by its rule, like every built-in method's.
    bad = subprocess.run(command[:-1] + ["loss.scaled_sum_factor=-1"], cwd=tree, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "loss.scaled_sum_factor" in bad.stderr and "> 0" in bad.stderr
