"""The project's one base error type, and how a script reports bad input.

Every error that means "the input is wrong" (a setting, a data file, a weights file, a
checkpoint, a run folder) derives from `ProjectError`, so a script recognises them all without
importing the modules that raise them. `run_main` turns them, and path errors, into one
`error: <message>` line on stderr and exit code 2.
"""
import sys
from typing import Callable


class ProjectError(Exception):
    """Bad input the user can fix; the message names the file or setting and what was expected."""



# OSErrors that mean a path the user gave is wrong; other OSErrors keep their traceback.
_PATH_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)


def run_main(main: Callable[[dict], object], make_config: Callable[[], dict]) -> None:
    """A train script's entry point: `main(make_config())`, bad input reported in one line.

    A ProjectError (ConfigError, CheckpointError, IDRiDError, WeightsError, ...) and path errors
    (file not found, permission denied, ...) print `error: <message>` on stderr and exit with code 2; any other
    exception keeps its traceback.
    """
    try:
        main(make_config())
    except Exception as error:
        message = input_error_message(error)
        if message is None:
            raise
        print("error: " + message.replace("\n", "\n  "), file=sys.stderr)
        raise SystemExit(2) from None


def input_error_message(error: Exception) -> str | None:
    """The message of an error that says the input is wrong, or None for any other error."""
    if isinstance(error, ProjectError):
        return _unwrap_worker_message(error)
    if isinstance(error, _PATH_ERRORS) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return None


def _unwrap_worker_message(error: Exception) -> str:
    """The error's own message, without the traceback a DataLoader worker wraps around it."""
    text = str(error)
    raised_as = f"{type(error).__module__}.{type(error).__qualname__}: "
    if text.startswith("Caught ") and raised_as in text:
        text = text[text.rindex(raised_as) + len(raised_as):]
    return text.strip()
