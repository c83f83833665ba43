"""The run folder: its files, safe checkpoints, resume and --no-resume, refused checkpoints, the
files of a run written with earlier names read with today's."""
import json
import os
from time import strftime as time_strftime

import harness_toy
import pytest
import torch
from toy_runs import (
    assert_same_run,
    snapshot,
    toy_config,
)

from codebase.config import (
    ConfigError,
)
from codebase.training.run_folder import (
    CheckpointError,
    Run,
    load_checkpoint,
)



@pytest.mark.slow  # trains models or runs scripts in subprocesses
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


@pytest.mark.slow  # trains models or runs scripts in subprocesses
def test_history_json_lagging_the_checkpoint_is_rewritten_on_resume(tmp_path, reference):
    """A crash between writing checkpoint.pth and history.json leaves history.json one epoch behind."""
    harness_toy.main(toy_config(tmp_path, train__epochs=2))
    history_path = tmp_path / "toy" / "history.json"
    history_path.write_text(json.dumps(json.loads(history_path.read_text())[:1]))
    harness_toy.main(toy_config(tmp_path))
    assert_same_run(tmp_path / "toy", reference)


@pytest.mark.slow  # trains models or runs scripts in subprocesses
def test_incompatible_resume_lists_the_differing_keys_and_changes_nothing(tmp_path):
    harness_toy.main(toy_config(tmp_path, train__epochs=1))
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        Run(toy_config(tmp_path, model__hidden=32, train__lr=0.1), harness_toy.RESUME_RULES)
    assert "model.hidden: 16 (checkpoint) -> 32 (now)" in str(error.value)
    assert "train.lr" not in str(error.value)
    assert snapshot(tmp_path) == before


@pytest.mark.slow  # trains models or runs scripts in subprocesses
def test_no_resume_starts_a_new_folder_and_keeps_the_earlier_run(tmp_path):
    harness_toy.main(toy_config(tmp_path, train__epochs=1))
    before = snapshot(tmp_path / "toy")
    run = Run(toy_config(tmp_path, run__resume=False))
    assert run.folder == tmp_path / "toy_2" and run.checkpoint is None
    assert run.config["run"]["name"] == "toy_2"
    assert snapshot(tmp_path / "toy") == before
    assert f"{tmp_path / 'toy'} holds an earlier run, which is kept (--no-resume)" in \
        (tmp_path / "toy_2" / "train_log.txt").read_text()
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        Run(toy_config(tmp_path, run__name="fresh", run__resume=True))


@pytest.mark.slow  # trains models or runs scripts in subprocesses
def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "saved"
    blocker.write_text("a file where the save folder should be")
    with pytest.raises(ConfigError, match=f"cannot write the run folder {blocker / 'toy'}"):
        Run(toy_config(blocker))


@pytest.mark.slow  # trains models or runs scripts in subprocesses
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


def test_a_checkpoint_of_an_earlier_release_resumes_with_its_renamed_keys_upgraded(tmp_path):
    """A classifier checkpoint that still says loss.rg_weight / mer_weight compares equal to today's
    loss.task_weights holding the same weights; a weight that really changed is refused by its new name."""
    from codebase.config import FIXES_THE_RUN
    from codebase.earlier_config import upgrade_config
    from codebase.training.run_folder import _check_compatible
    rules = {"model": FIXES_THE_RUN, "loss": FIXES_THE_RUN}
    old = {"model": {"backbone": "resnet18"}, "loss": {"rg_weight": 2.0, "mer_weight": 1.0}}
    same = {"model": {"backbone": "resnet18"},
            "loss": {"task_weights": {"classification_rg": 2.0}}}  # MER weighs 1 either way
    assert _check_compatible(tmp_path, upgrade_config(old), same, rules) == []
    changed = {"model": {"backbone": "resnet18"}, "loss": {"task_weights": {"classification_rg": 3.0}}}
    with pytest.raises(ConfigError) as error:
        _check_compatible(tmp_path, upgrade_config(old), changed, rules)
    assert "loss.task_weights.classification_rg: 2.0 (checkpoint) -> 3.0 (now)" in str(error.value)
    assert "rg_weight" not in str(error.value)


@pytest.mark.slow  # trains the toy model
def test_figures_are_redrawn_when_due_and_hold_every_epoch_at_the_end(tmp_path, monkeypatch):
    """A drawing that takes 1 s of a clock on which each epoch takes 4 s is redrawn once 9 s have
    passed since the last (PLOT_WAIT_FACTOR): after epochs 1, 4 and 7 of 8, then after the last
    epoch whatever the clock; a resumed run draws at once."""
    from types import SimpleNamespace

    from codebase.evaluation import plots
    from codebase.training import loop, run_folder
    assert run_folder.PLOT_WAIT_FACTOR == 9.0
    clock = SimpleNamespace(now=0.0)
    drawn = []

    def draw(history, out_dir):
        drawn.append(len(history))
        clock.now += 1.0

    def finish_epoch(run, tracked, epoch, save=loop._save):
        clock.now += 4.0
        save(run, tracked, epoch)

    monkeypatch.setattr(plots, "plot_history", draw)
    monkeypatch.setattr(run_folder, "time", SimpleNamespace(perf_counter=lambda: clock.now, strftime=time_strftime))
    monkeypatch.setattr(loop, "_save", finish_epoch)
    harness_toy.main(toy_config(tmp_path, run__plots=True, train__epochs=8))
    assert drawn == [1, 4, 7, 8]
    drawn.clear()
    harness_toy.main(toy_config(tmp_path, run__plots=True, train__epochs=9))
    assert drawn == [8, 9]  # on resuming, then after the new last epoch (due or not)
