"""run_main: which errors are bad input (one line, exit 2) and which keep their traceback."""

import pytest

from codebase.config import ConfigError
from codebase.data import idrid
from codebase.errors import input_error_message, run_main
from codebase.networks.backbones import WeightsError


def test_which_errors_are_reported_as_bad_input(tmp_path):
    missing = tmp_path / "weights.pth"
    assert input_error_message(WeightsError(f"pretrained={str(missing)!r}: no such file")) == (
        f"pretrained={str(missing)!r}: no such file")
    assert input_error_message(FileNotFoundError(2, "No such file or directory", str(missing))) == (
        f"{missing}: No such file or directory")
    wrapped = ("Caught IDRiDError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in <module>\ncodebase.data.idrid.IDRiDError: x.jpg: empty file\n')
    assert input_error_message(idrid.IDRiDError(wrapped)) == "x.jpg: empty file"
    assert input_error_message(OSError(28, "No space left on device")) is None
    assert input_error_message(RuntimeError("a bug")) is None


def test_run_main_exits_2_on_bad_input_and_keeps_other_tracebacks(capsys):
    def bad_config():
        raise ConfigError("train.batch_size=0: expected an integer >= 1")

    with pytest.raises(SystemExit) as stop:
        run_main(lambda config: None, bad_config)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: train.batch_size=0: expected an integer >= 1\n"

    def broken(config):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_main(broken, dict)


def test_run_tool_ends_interrupts_and_storage_errors_in_one_line(capsys):
    import errno

    from codebase.errors import run_tool

    def interrupted():
        raise KeyboardInterrupt

    def disk_full():
        raise OSError(errno.ENOSPC, "No space left on device", "out/overlay.png")

    assert run_tool(interrupted) == 130
    assert capsys.readouterr().err.startswith("interrupted: stopped at once")
    assert run_tool(disk_full) == 2
    assert capsys.readouterr().err == "error: out/overlay.png: could not be written: No space left on device (storage)\n"
    assert run_tool(lambda: 1) == 1 and run_tool(lambda: None) == 0
