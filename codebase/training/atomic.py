"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

The data goes to a temporary file in the destination's folder, is flushed and fsync'ed, then
`os.replace` swaps it in (atomic on POSIX and Windows within one file system). If the writer
fails, the temporary file is removed; if the process is killed, a stale `.<name>.*.tmp` file
may remain next to an intact destination (`remove_stale_temporaries` cleans those up).
"""

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

import torch

TEMP_SUFFIX = ".tmp"


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
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_torch_save(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda file: torch.save(obj, file))


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
