"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

The data goes to a temporary file in the destination's folder, is flushed and fsync'ed, then
`os.replace` swaps it in (atomic on POSIX and Windows within one file system). If the writer
fails, the temporary file is removed; if the process is killed, a stale `.<name>.*.tmp` file
may remain next to an intact destination (`remove_stale_temporaries` cleans those up). A full
disk, a quota or a file-size limit (ENOSPC, EDQUOT, EFBIG) raises StorageError naming the file.
"""

import errno
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from codebase.errors import ProjectError

TEMP_SUFFIX = ".tmp"
_STORAGE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "the file-size limit was reached",
                   getattr(errno, "EDQUOT", -1): "the disk quota is exhausted"}


class StorageError(ProjectError):
    """A file could not be written for lack of space or a size limit; its previous version is intact."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(file)` on a temporary file, then atomically rename it to `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        with open(temporary, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRORS:
            kept = "its previous version is intact" if path.exists() else "nothing was written"
            raise StorageError(f"{path}: could not be written: {_STORAGE_ERRORS[error.errno]} "
                               f"({os.strerror(error.errno)}); {kept}") from None
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_torch_save(obj, path: str | Path) -> Path:
    def write(file):
        recorder = _WriteRecorder(file)
        try:
            torch.save(obj, recorder)
        except Exception as error:
            # torch's zip writer turns a failed write into a RuntimeError: raise the OSError it hid
            if recorder.error is not None and not isinstance(error, OSError):
                raise recorder.error from error
            raise
    return atomic_write(path, write)


class _WriteRecorder:
    """A binary file whose `write` remembers the OSError it raised."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files left in `folder` by writers that were killed."""
    stale = sorted(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
