"""An exclusive lock on a run folder, held for the run's life, so two processes never share one.

The lock is `fcntl.flock` on `<folder>/.lock`, which holds the holder's PID, host and start time.
The kernel drops a flock when its process ends, however it ends (SIGKILL, a crash, a lost
node), so a lock file left by a killed process is stale by construction and the next run takes
it over. The file is removed when the run ends normally. On systems without `fcntl` (Windows)
the folder is not locked.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from codebase.errors import ProjectError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"


class RunFolderInUse(ProjectError):
    """Another live process holds the run folder's lock."""


def holder(folder: str | Path) -> str | None:
    """Who holds `folder`'s lock now (the lock file's text), or None when no live process does."""
    path = Path(folder) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    try:
        file = open(path, encoding="utf-8")
    except FileNotFoundError:  # released between the check and the open
        return None
    with file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return file.read().strip() or "another process"
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        return None


class FolderLock:
    """`acquire()` takes the folder's lock or raises RunFolderInUse naming the holder; `release()`
    removes the file and drops the lock. `stale` describes a dead holder whose lock was taken over."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.stale: str | None = None
        self._file = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        while True:
            file = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "another process"
                file.close()
                raise RunFolderInUse(
                    f"{self.folder}: run folder in use by {holder}; wait for that run to end, or choose "
                    "another folder with --run-name NAME") from None
            # A releasing holder may have removed the file between our open and our lock: then the
            # lock we hold is on a file nobody else will open. Try again on the current file.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                file.close()
                continue
            if current.st_ino != os.fstat(file.fileno()).st_ino:
                file.close()
                continue
            break
        file.seek(0)
        left = file.read().strip()
        self.stale = left or None  # the flock was free, so whoever wrote this has ended
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} on host {socket.gethostname()} "
                   f"(since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding the lock
        except OSError:
            pass
        self._file.close()
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None
