"""What ends a run early: signals, non-finite losses; the command that resumes."""
import signal
import sys

import harness_toy
import pytest
import torch
from toy_runs import (
    assert_same_run,
    toy_config,
)

from codebase.training.run_folder import Run, load_checkpoint
from codebase.training.stopping import NonFiniteLossError, check_finite, resume_command

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses


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


def test_resume_command_points_at_the_run(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["train_mlt_model.py", "--no-resume", "--run-name", "x", "--demo"])
    run = Run(toy_config(tmp_path, run__name="x_2"))
    assert resume_command(run) == f"{sys.executable} train_mlt_model.py --demo --run-name x_2 --resume"
    run.close()


def test_resume_command_drops_settings_that_would_win_over_its_flags(monkeypatch, tmp_path):
    """--set wins over --run-name and --resume: a printed command keeping --set run.name=x or
    run.resume=false would start another run instead of resuming this one."""
    monkeypatch.setattr(sys, "argv", ["train_classifier.py", "--set", "run.name=x", "--set=run.resume=false",
                                      "--set", "optim.lr=0.1", "--set", "run.plots=false"])
    run = Run(toy_config(tmp_path, run__name="x"))
    assert resume_command(run) == (f"{sys.executable} train_classifier.py --set optim.lr=0.1 --set run.plots=false "
                                   "--run-name x --resume")
    run.close()
