"""The training loop and the run folder: resume, interrupts, crashes, several processes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness_toy
import pytest
import torch

from codebase.config import (
    ConfigError,
    set_value,
    with_defaults,
)
from codebase.runtime import distributed
from codebase.runtime.device import (
    make_grad_scaler,
)
from codebase.runtime.progress import progress
from codebase.training.loop import LossSums, optimizer_step, summary_line
from codebase.training.run_folder import CheckpointError, Run, load_checkpoint
from codebase.training.stopping import NonFiniteLossError, check_finite, resume_command

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses

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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final weights and history of an uninterrupted 4-epoch toy run."""
    save_dir = tmp_path_factory.mktemp("reference")
    harness_toy.main(toy_config(save_dir))
    return final_state(save_dir / "toy")


def test_run_writes_its_files_and_a_safe_checkpoint(tmp_path, reference):
    harness_toy.main(toy_config(tmp_path, run__plots=True, train__epochs=2))
    folder = tmp_path / "toy"
    names = {path.name for path in folder.iterdir()}
    assert names == {"config.json", "checkpoint.pth", "model.pth", "best.pth", "history.json", "train_log.txt",
                     "test_metrics.json", "plots", "tensorboard"}
    assert {path.name for path in (folder / "plots").iterdir()} >= {"loss.png", "segmentation.png",
                                                                    "router_usage.png"}
    checkpoint = load_checkpoint(folder / "checkpoint.pth")
    assert set(checkpoint) == {"epoch", "model", "optimizer", "scheduler", "scaler", "rng", "config", "history",
                               "selection", "step_counter"}
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    assert json.loads((folder / "config.json").read_text()) == checkpoint["config"]
    log = (folder / "train_log.txt").read_text()
    assert "epoch 2/4" not in log and "epoch 2/2  lr 1.00e-02  train loss" in log
    history = json.loads((folder / "history.json").read_text())
    assert history[1]["validation"]["segmentation"]["MA"]["iou"] == history[1]["validation"]["accuracy"] / 2


@pytest.mark.parametrize("stop_after", [1, 3])
def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path, reference, stop_after):
    harness_toy.main(toy_config(tmp_path, train__epochs=stop_after))
    harness_toy.main(toy_config(tmp_path))
    assert_same_run(tmp_path / "toy", reference)
    log = (tmp_path / "toy" / "train_log.txt").read_text()
    assert f"resumed from {tmp_path / 'toy' / 'checkpoint.pth'} after epoch {stop_after}" in log
    assert "setting changed since the checkpoint: train.epochs" in log


def test_history_json_lagging_the_checkpoint_is_rewritten_on_resume(tmp_path, reference):
    """A crash between writing checkpoint.pth and history.json leaves history.json one epoch behind."""
    harness_toy.main(toy_config(tmp_path, train__epochs=2))
    history_path = tmp_path / "toy" / "history.json"
    history_path.write_text(json.dumps(json.loads(history_path.read_text())[:1]))
    harness_toy.main(toy_config(tmp_path))
    assert_same_run(tmp_path / "toy", reference)


@pytest.mark.parametrize("signal_name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_stops_after_the_step_and_resume_is_exact(tmp_path, reference, signal_name, code):
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        harness_toy.main(toy_config(tmp_path, toy__interrupt_at=[3, 2], toy__signal=signal_name))
    assert stop.value.code == code
    folder = tmp_path / "toy"
    assert load_checkpoint(folder / "checkpoint.pth")["epoch"] == 2
    log = (folder / "train_log.txt").read_text()
    assert f"stopped by {signal_name} during epoch 3; checkpoint.pth holds epoch 2" in log
    assert "Resume with: " in log and "--run-name toy --resume" in log
    assert signal.getsignal(signal.SIGINT) is handler_before, "handlers are restored"
    harness_toy.main(toy_config(tmp_path))
    assert_same_run(folder, reference)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    harness_toy.main(toy_config(tmp_path, train__epochs=1))
    folder = tmp_path / "toy"
    before = (folder / "checkpoint.pth").read_bytes()
    with pytest.raises(SystemExit) as stop:
        harness_toy.main(toy_config(tmp_path, toy__nan_at=[2, 1]))
    assert stop.value.code == 1
    assert (folder / "checkpoint.pth").read_bytes() == before
    log = (folder / "train_log.txt").read_text()
    assert "non-finite loss nan at epoch 2, step 1; non-finite components: penalty" in log
    assert "checkpoint.pth keeps epoch 1" in log


def test_check_finite_names_components():
    check_finite(torch.tensor(1.0), {"focal": torch.tensor(0.5)}, step=3, epoch=1)
    with pytest.raises(NonFiniteLossError) as error:
        check_finite(torch.tensor(float("inf")), {"focal": torch.tensor(0.5), "dice": float("inf")},
                             step=3, epoch=1)
    assert "epoch 1, step 3" in str(error.value) and "components: dice" in str(error.value)
    assert error.value.components == {"focal": 0.5, "dice": float("inf")}


def _snapshot(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_incompatible_resume_lists_the_differing_keys_and_changes_nothing(tmp_path):
    harness_toy.main(toy_config(tmp_path, train__epochs=1))
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        Run(toy_config(tmp_path, model__hidden=32, train__lr=0.1))
    assert "model.hidden: 16 (checkpoint) -> 32 (now)" in str(error.value)
    assert "train.lr" not in str(error.value)
    assert _snapshot(tmp_path) == before


def test_no_resume_starts_a_new_folder_and_keeps_the_earlier_run(tmp_path):
    harness_toy.main(toy_config(tmp_path, train__epochs=1))
    before = _snapshot(tmp_path / "toy")
    run = Run(toy_config(tmp_path, run__resume=False))
    assert run.folder == tmp_path / "toy_2" and run.checkpoint is None
    assert run.config["run"]["name"] == "toy_2"
    assert _snapshot(tmp_path / "toy") == before
    assert f"{tmp_path / 'toy'} holds an earlier run, which is kept (--no-resume)" in \
        (tmp_path / "toy_2" / "train_log.txt").read_text()
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        Run(toy_config(tmp_path, run__name="fresh", run__resume=True))


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "saved"
    blocker.write_text("a file where the save folder should be")
    with pytest.raises(ConfigError, match=f"cannot write the run folder {blocker / 'toy'}"):
        Run(toy_config(blocker))


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"epoch": 1, "model": Exploit(), "config": {}, "history": []}, folder / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        Run(toy_config(tmp_path))
    assert not marker.exists()


def test_resume_command_points_at_the_run(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["train_mlt_model.py", "--no-resume", "--run-name", "x", "--demo"])
    run = Run(toy_config(tmp_path, run__name="x_2"))
    assert resume_command(run) == "python3 train_mlt_model.py --demo --run-name x_2 --resume"


def test_summary_line_and_progress():
    entry = {"epoch": 3, "lr": 0.001, "time": 4.25, "train": {"loss": 0.5},
             "eval": {"grading": {"rg_kappa": 0.25, "rg_confusion": [[1]]}, "segmentation": {"MA": {"iou": 1}}}}
    assert summary_line(entry, 30) == "epoch 3/30  lr 1.00e-03  train loss 0.5  eval rg_kappa 0.25  4.2s"
    bar = progress(range(3), "quiet", enabled=False)
    bar.set_postfix(loss=1.0)
    assert list(bar) == [0, 1, 2]



def _toy_command(save_dir, *settings):
    command = [sys.executable, str(TOY_SCRIPT), "--set", f"run.save_dir={save_dir}"]
    for setting in settings:
        command += ["--set", setting]
    return command


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, reference):
    """Kill the toy run once mid-epoch and once around the end of an epoch, when it evaluates and
    writes a (deliberately large) checkpoint; then let it finish and compare with the reference."""
    command = _toy_command(tmp_path, "toy.print_steps=true", "model.ballast=1000000")
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


def test_two_process_gloo_run_writes_once_and_resumes_in_one_process(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *_toy_command(tmp_path, "train.epochs=2")[1:]]
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


def test_optimizer_step_and_loss_sums():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    sums = LossSums()
    for target in (1.0, 3.0):
        loss = (layer(torch.ones(1, 2)) - target).pow(2).mean()
        optimizer_step(loss, optimizer, make_grad_scaler(torch.device("cpu"), "off"))
        running = sums.add(loss, {"part": torch.tensor(target)})
    assert not torch.equal(before, layer.weight)
    assert running == pytest.approx(sums.means()["loss"]) and sums.means()["part"] == pytest.approx(2.0)


def test_best_checkpoint_is_the_epoch_with_the_best_monitored_score(tmp_path):
    """Scores forced to peak at epoch 2 of 4: best.pth holds epoch 2's weights, model.pth epoch 4's, and
    test_metrics.json the test split of both."""
    harness_toy.main(toy_config(tmp_path / "long", train__monitor="score", toy__scores=[0.1, 0.9, 0.5, 0.3]))
    harness_toy.main(toy_config(tmp_path / "short", train__monitor="score", train__epochs=2,
                                toy__scores=[0.1, 0.9, 0.5, 0.3]))
    folder = tmp_path / "long" / "toy"
    best = torch.load(folder / "best.pth", weights_only=True)
    epoch_two = torch.load(tmp_path / "short" / "toy" / "model.pth", weights_only=True)
    last = torch.load(folder / "model.pth", weights_only=True)
    for name, value in epoch_two.items():
        torch.testing.assert_close(best[name], value, rtol=0, atol=0)
    assert any(not torch.equal(best[name], last[name]) for name in last)
    history = json.loads((folder / "history.json").read_text())
    assert [entry["monitor"] for entry in history] == [0.1, 0.9, 0.5, 0.3]
    assert all("validation" in entry and "test" not in entry for entry in history)
    results = json.loads((folder / "test_metrics.json").read_text())
    assert results["best"]["epoch"] == 2 and results["best"]["monitor"] == 0.9 and results["last"]["epoch"] == 4
    assert results["best"]["metrics"]["accuracy"] != results["last"]["metrics"]["accuracy"] or \
        results["best"]["metrics"]["loss"] != results["last"]["metrics"]["loss"]
    assert "best weights (epoch 2" in (folder / "train_log.txt").read_text()


def test_early_stopping_stops_after_patience_evaluations_without_gain_and_stays_stopped(tmp_path):
    config = toy_config(tmp_path, train__monitor="score", train__patience=1, toy__scores=[0.1, 0.9, 0.5, 0.95])
    history = harness_toy.main(config)
    assert [entry["epoch"] for entry in history] == [1, 2, 3]  # epoch 3 did not beat epoch 2: stop
    log = (tmp_path / "toy" / "train_log.txt").read_text()
    assert "early stopping after epoch 3" in log
    again = harness_toy.main(toy_config(tmp_path, train__monitor="score", train__patience=1,
                                        toy__scores=[0.1, 0.9, 0.5, 0.95]))  # resumes: already stopped
    assert [entry["epoch"] for entry in again] == [1, 2, 3]
    assert json.loads((tmp_path / "toy" / "test_metrics.json").read_text())["best"]["epoch"] == 2


def test_test_split_is_evaluated_once_at_the_end(tmp_path, monkeypatch):
    calls = []
    original = harness_toy.evaluate_model
    monkeypatch.setattr(harness_toy, "evaluate_model", lambda *args: calls.append(len(calls)) or original(*args))
    monkeypatch.setattr("codebase.training.loop._test_once", lambda run, model, test, *rest: calls.append("test"))
    harness_toy.main(toy_config(tmp_path, train__epochs=3))
    assert calls == [0, 1, 2, "test"]  # one validation evaluation per epoch, then the test split once
