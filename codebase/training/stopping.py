"""What ends a run early, and how it resumes: SIGINT/SIGTERM, a non-finite loss.

Signals set a flag while `stop_on_signals` is active; engines call `should_stop()` after each
optimizer step and return early; `fit` then discards the unfinished epoch, keeps the checkpoint of
the last complete epoch (so a resumed run is bit-identical to an uninterrupted one on CPU) and
exits (`exit_if_stopped`) with the command that resumes (`resume_command`). A second signal aborts
at once (writes stay atomic). `check_finite` raises NonFiniteLossError naming the step and the
non-finite loss components.
"""
import contextlib
import math
import os
import shlex
import signal
import sys
import threading

import torch

from codebase.runtime import distributed
from codebase.training.run_folder import Run


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; `components` maps each loss term to its value."""

    def __init__(self, message: str, step: int | None, epoch: int | None, components: dict):
        super().__init__(message)
        self.step, self.epoch, self.components = step, epoch, components


_stop_signal: int | None = None  # the signal that asked to stop, until the next stop_on_signals


def should_stop() -> bool:
    """True once SIGINT/SIGTERM arrived (on any rank). Engines call it after each optimizer step
    of a training loop and return early when it is true. Under DDP it is a collective (one tiny
    all-reduce), so every rank must call it at the same steps; don't call it in evaluation loops,
    whose ranks may see different numbers of batches.
    """
    return distributed.any_rank(_stop_signal is not None)


def check_finite(loss: torch.Tensor, components: dict | None = None, step: int | None = None,
                 epoch: int | None = None) -> None:
    """Raise NonFiniteLossError naming the step and the non-finite components of the loss.

    One host synchronisation per call (and, under DDP, one all-reduce so all ranks stop together).
    """
    locally_finite = bool(torch.isfinite(loss.detach()).all())
    if not distributed.any_rank(not locally_finite):
        return
    values = {name: float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
              for name, value in (components or {}).items()}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    where = f"epoch {epoch}, step {step}"
    if locally_finite:
        message = f"non-finite loss on another rank at {where}"
    else:
        listed = ", ".join(f"{name}={value:.4g}" for name, value in values.items())
        message = (f"non-finite loss {float(loss.detach()):.4g} at {where}; non-finite components: "
                   f"{', '.join(bad) or 'none of the listed'}" + (f" ({listed})" if listed else ""))
    raise NonFiniteLossError(message, step, epoch, values)


@contextlib.contextmanager
def stop_on_signals():
    """Route SIGINT/SIGTERM to the stop flag while training (main thread only)."""
    global _stop_signal
    _stop_signal = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in previous:
        signal.signal(number, _request_stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _request_stop(number: int, frame) -> None:
    global _stop_signal
    if _stop_signal is not None:
        raise KeyboardInterrupt
    _stop_signal = number
    if distributed.is_main_process():
        os.write(2, f"\n{signal.Signals(number).name}: stopping after the current step "
                    f"(send it again to abort at once)\n".encode())


def exit_if_stopped(run: Run, epoch: int, completed: int) -> None:
    """After a signal: log what is kept and how to resume, then SystemExit(128 + signal)."""
    if not should_stop():
        return
    number = _stop_signal or signal.SIGTERM
    name = signal.Signals(number).name
    if completed == epoch:
        kept = f"after epoch {epoch}, which checkpoint.pth holds"
    elif completed:
        kept = (f"during epoch {epoch}; checkpoint.pth holds epoch {completed} (the partial epoch is "
                "dropped so that the resumed run equals an uninterrupted one)")
    else:
        kept = f"during epoch {epoch}, before any epoch was complete: nothing to resume yet"
    run.log(f"stopped by {name} {kept}. Resume with: {resume_command(run)}")
    raise SystemExit(128 + number)


def resume_command(run: Run) -> str:
    """This process's command line, pointed at the run's folder with --resume: without what would
    point it elsewhere (--run-name, --resume/--no-resume, and --set of run.name or run.resume, which
    win over the flags), so the command resumes this run as printed."""
    args, skip = [], 0
    argv = sys.argv[1:]
    for index, arg in enumerate(argv):
        if skip:
            skip -= 1
        elif arg == "--run-name":
            skip = 1
        elif arg == "--set" and index + 1 < len(argv) and _points_elsewhere(argv[index + 1]):
            skip = 1
        elif arg.startswith("--set=") and _points_elsewhere(arg[len("--set="):]):
            continue
        elif arg not in ("--resume", "--no-resume") and not arg.startswith("--run-name="):
            args.append(arg)
    launcher = (["torchrun", f"--nproc_per_node={distributed.world_size()}"]
                if distributed.world_size() > 1 else [sys.executable])
    return shlex.join(launcher + [sys.argv[0], *args, "--run-name", run.name, "--resume"])


def _points_elsewhere(assignment: str) -> bool:
    return assignment.partition("=")[0].strip() in ("run.name", "run.resume")
