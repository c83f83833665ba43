"""The project's one base error type, and how a script reports bad input.

Every error that means "the input is wrong" (a setting, a data file, a weights file, a
checkpoint, a run folder) derives from `ProjectError`, so a script recognises them all without
importing the modules that raise them. `run_main` turns them, and path errors, into one
`error: <message>` line on stderr and exit code 2.
"""
import errno
import os
import sys
import time
from typing import Callable


class ProjectError(Exception):
    """Bad input the user can fix; the message names the file or setting and what was expected."""



# OSErrors that mean a path the user gave is wrong; other OSErrors keep their traceback.
_PATH_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)
# OSErrors of storage (full disk, file-size limit, quota, read-only file system): named with the file.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, getattr(errno, "EDQUOT", -1)}


def run_main(main: Callable[[dict], object], make_config: Callable[[], dict]) -> None:
    """A train script's entry point: `main(make_config())`, bad input reported in one line.

    A ProjectError (ConfigError, CheckpointError, IDRiDError, WeightsError, StorageError, ...) and
    path errors (file not found, permission denied, ...) print `error: <message>` on stderr and
    exit with code 2; a second Ctrl-C (training stops at once) exits with 130 in one line; any
    other exception keeps its traceback.
    """
    def train() -> int:
        main(make_config())
        return 0

    code = run_tool(train)
    if code:
        raise SystemExit(code)


def run_tool(main: Callable[[], int | None]) -> int:
    """A tool's entry point (predict.py, export.py, compare_models.py, ...): the exit code of `main()`
    (None: 0), or 2 after one `error:` line for bad input (`input_error_message`; under torchrun
    printed by the first process only), or 130 after one line for an interrupt that ended it at once."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        _print_once("interrupted: stopped at once; files are written whole or not at all, so what was "
                    "saved before is intact")
        return 130
    except Exception as error:
        message = input_error_message(error)
        if message is None:
            raise
        _print_once("error: " + message.replace("\n", "\n  "))
        return 2


# Under torchrun every process meets the same bad input: the first process reports it at once, the
# others wait this long first, so torchrun ends them before they repeat it (and names the first
# process, exit code 2, as the failure); an error only another process meets is still printed.
OTHER_RANKS_WAIT_S = 30.0


def _print_once(line: str) -> None:
    """Print on stderr, once for a torchrun group (see OTHER_RANKS_WAIT_S)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0":
        time.sleep(OTHER_RANKS_WAIT_S)
    print(line, file=sys.stderr, flush=True)


def input_error_message(error: Exception) -> str | None:
    """The message of an error that says the input is wrong, or None for any other error."""
    if isinstance(error, ProjectError):
        return _unwrap_worker_message(error)
    if isinstance(error, _PATH_ERRORS) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS and error.filename is not None:
        return f"{error.filename}: could not be written: {error.strerror or error} (storage)"
    return None


def _unwrap_worker_message(error: Exception) -> str:
    """The error's own message, without the traceback a DataLoader worker wraps around it."""
    text = str(error)
    raised_as = f"{type(error).__module__}.{type(error).__qualname__}: "
    if text.startswith("Caught ") and raised_as in text:
        text = text[text.rindex(raised_as) + len(raised_as):]
    return text.strip()
