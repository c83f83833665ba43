"""Atomic writes: an old file survives a failing or killed writer."""

import subprocess
import sys
from pathlib import Path

import harness_toy
import pytest

from codebase.runtime import atomic

TOY_SCRIPT = Path(harness_toy.__file__)
REPO = TOY_SCRIPT.parents[1]


def test_atomic_write_keeps_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")

    def failing(file):
        file.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_keeps_old_file_when_the_process_is_killed_mid_write(tmp_path):
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")
    writer = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from codebase.runtime import atomic\n"
              "def write(file):\n"
              "    file.write(b'x' * 1000); file.flush(); print('writing', flush=True); time.sleep(60)\n"
              f"atomic.atomic_write({str(target)!r}, write)\n")
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait()
    assert target.read_bytes() == b"old"
    assert len(atomic.remove_stale_temporaries(tmp_path)) == 1
    assert list(tmp_path.iterdir()) == [target]


