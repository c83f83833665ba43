"""Run-folder locks: the lock file's protocol."""
import os

import pytest

from codebase.runtime.lock import LOCK_FILE, FolderLock


def test_lock_file_protocol(tmp_path):
    first, second = FolderLock(tmp_path), FolderLock(tmp_path)
    first.acquire()
    with pytest.raises(Exception, match=f"in use by process {os.getpid()}"):
        second.acquire()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    (tmp_path / LOCK_FILE).write_text("process 999999 on host gone (since 2020-01-01 00:00:00)\n")
    second.acquire()  # nobody holds the flock: the writer has ended
    assert second.stale == "process 999999 on host gone (since 2020-01-01 00:00:00)"
    assert f"process {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()
    second.release()
