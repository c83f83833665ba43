"""Model selection: best.pth by the monitored score, early stopping, the test split once."""
import json

import harness_toy
import pytest
import torch
from codebase.training.selection import Selection
from toy_runs import (
    toy_config,
)

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses


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


def test_patience_of_today_decides_after_a_resume():
    stopped = Selection(lambda metrics: metrics["score"], patience=2)
    for epoch, score in enumerate([0.5, 0.4, 0.3], 1):
        stopped.update(epoch, {"score": score})
    assert stopped.stopped_early
    for patience, stops in ((0, False), (5, False), (2, True)):
        resumed = Selection(lambda metrics: metrics["score"], patience=patience)
        resumed.load_state_dict(stopped.state_dict())
        assert resumed.stopped_early == stops and resumed.best_epoch == 1
