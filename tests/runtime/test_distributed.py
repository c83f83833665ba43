"""Processes: single-process no-ops, and a two-process gloo run that writes once and resumes in one."""
import json
import os
import subprocess
import sys

import harness_toy
import pytest
import torch
from toy_runs import (
    toy_command,
    toy_config,
)

from codebase.runtime import distributed

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses


def test_two_process_gloo_run_writes_once_and_resumes_in_one_process(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *toy_command(tmp_path, "train.epochs=2")[1:]]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    folder = tmp_path / "toy"
    log = (folder / "train_log.txt").read_text()
    assert log.count("epoch 2/2") == 1 and "2 process(es)" in log
    history = json.loads((folder / "history.json").read_text())
    assert len(history) == 2

    model = harness_toy.ToyModel(16, 0)
    model.load_state_dict(torch.load(folder / "model.pth", weights_only=True))
    loader = torch.utils.data.DataLoader(harness_toy.ToyData(20, train=False), batch_size=7)
    single = harness_toy.evaluate_model(model, loader, torch.device("cpu"))
    assert single["accuracy"] == history[-1]["validation"]["accuracy"]
    assert single["loss"] == pytest.approx(history[-1]["validation"]["loss"], abs=1e-6)

    history = harness_toy.main(toy_config(tmp_path, train__epochs=3))
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert "1 process(es)" in (folder / "train_log.txt").read_text()


def test_single_process_distributed_helpers_are_no_ops():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    tensors = [torch.ones(2)]
    distributed.all_reduce_sum(tensors)
    assert tensors[0].tolist() == [1.0, 1.0]
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, torch.device("cpu")) is model and distributed.unwrap(model) is model
    assert list(distributed.eval_sampler(list(range(5)))) == [0, 1, 2, 3, 4]
    sampler = distributed.train_sampler(list(range(5)), seed=0)
    sampler.set_epoch(1)
    assert sorted(sampler) == [0, 1, 2, 3, 4]
