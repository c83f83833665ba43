"""The training loop and the run folder: resume, interrupts, crashes, several processes."""

import json
import random
import subprocess
import time

import harness_toy
import pytest
import torch
from toy_runs import (
    assert_same_run,
    final_state,
    toy_command,
    toy_config,
)

from codebase.runtime.device import (
    make_grad_scaler,
)
from codebase.runtime.progress import progress
from codebase.training.loop import LossSums, optimizer_step, summary_line
from codebase.training.run_folder import load_checkpoint

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses


@pytest.mark.parametrize("stop_after", [1, 3])
def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path, reference, stop_after):
    harness_toy.main(toy_config(tmp_path, train__epochs=stop_after))
    harness_toy.main(toy_config(tmp_path))
    assert_same_run(tmp_path / "toy", reference)
    log = (tmp_path / "toy" / "train_log.txt").read_text()
    assert f"resumed from {tmp_path / 'toy' / 'checkpoint.pth'} after epoch {stop_after}" in log
    assert "setting changed since the checkpoint, applied: train.epochs" in log


def test_summary_line_and_progress():
    entry = {"epoch": 3, "lr": 0.001, "time": 4.25, "train": {"loss": 0.5},
             "eval": {"grading": {"rg_kappa": 0.25, "rg_confusion": [[1]]}, "segmentation": {"MA": {"iou": 1}}}}
    assert summary_line(entry, 30) == "epoch 3/30  lr 1.00e-03  train loss 0.5  eval rg_kappa 0.25  4.2s"
    bar = progress(range(3), "quiet", enabled=False)
    bar.set_postfix(loss=1.0)
    assert list(bar) == [0, 1, 2]


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, reference):
    """Kill the toy run once mid-epoch and once around the end of an epoch, when it evaluates and
    writes a (deliberately large) checkpoint; then let it finish and compare with the reference."""
    command = toy_command(tmp_path, "toy.print_steps=true", "model.ballast=1000000")
    folder = tmp_path / "toy"
    chooser = random.Random(1)
    for last_line in (f"step {chooser.randint(1, 2)} {chooser.randint(0, 4)}", "step 3 4"):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in process.stdout:
            if line.strip() == last_line:
                break
        time.sleep(chooser.uniform(0.0, 0.1))
        process.kill()
        process.wait()
        if (folder / "checkpoint.pth").exists():
            load_checkpoint(folder / "checkpoint.pth")
            json.loads((folder / "history.json").read_text())
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    weights, history = final_state(folder)
    expected_weights, expected_history = reference
    assert history == expected_history
    for name, tensor in expected_weights.items():
        if name != "ballast":
            assert torch.equal(weights[name], tensor), name
    assert not list(folder.glob(".*.tmp"))


def test_optimizer_step_and_loss_sums():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    sums = LossSums()
    for target in (1.0, 3.0):
        loss = (layer(torch.ones(1, 2)) - target).pow(2).mean()
        optimizer_step(loss, optimizer, make_grad_scaler(torch.device("cpu"), "off"))
        sums.add(loss, {"part": torch.tensor(target)})
    assert not torch.equal(before, layer.weight)
    assert sums.running_mean() == pytest.approx(sums.means()["loss"]) and sums.means()["part"] == pytest.approx(2.0)


