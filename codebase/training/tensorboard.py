"""The event log of a run: TensorBoard event files in <run folder>/tensorboard/.

    tensorboard --logdir saved        # each run appears as <run name>/tensorboard

Every event is at the run's global optimizer step (`StepCounter`: steps of completed epochs plus
steps into the current one, kept in the checkpoint), so all curves share one x axis:

- each optimizer step: ``train_step/loss`` and ``train_step/<component>`` (what the engine's loss
  returned, e.g. ``train_step/loss_classification_rg``), written by `codebase.training.loop.run_steps` (read from
  the device STEPS_PER_READ steps at a time and at the end of each epoch, not after every step);
- each epoch, at its last step: every number of the history entry that `fit` appends to
  history.json, tagged by its key path (``lr``, ``monitor``, ``epoch``, ``time``, ``train/loss``,
  ``train/task_weights/<task>``, ``validation/grading/rg_kappa``,
  ``validation/segmentation/MA/aupr``, ``validation/routing/<task>/experts_per_image``,
  ``validation/routing/<task>/camera_mi``, ...; strings such as ``camera_mi_absent`` are left out);
  a list of numbers becomes one tag per item (``.../routing/<task>/usage/expert_<e>``, other
  lists ``.../<i>``); matrices such as confusion matrices are left to history.json;
- each evaluation: ``preview/<name>`` images from the train script's preview callback.

Resuming continues the same curves: the first event a process writes opens a new event file
whose SessionLog START (SummaryWriter's ``purge_step``) tells TensorBoard to drop every event at
that step or later from the earlier files, i.e. what an interrupted epoch wrote after the last
checkpoint (TensorBoard's fast data server likewise replaces a curve's points from a step that is
written again). Only rank 0 writes; nothing is written (no file) until the first event.
"""
import math
import time
from pathlib import Path

import numpy as np
import torch

from codebase.config import is_number

TENSORBOARD_FOLDER = "tensorboard"
STEP_SECTION = "train_step"
PREVIEW_SECTION = "preview"
EVENT_FILE_PREFIX = "events.out.tfevents."
STEPS_PER_READ = 50  # step events read back from the device together (and at every epoch's end)


class StepCounter:
    """Optimizer steps since the run began: the step every event of the run's log is written at.

    A checkpoint keeps the count of its last complete epoch. For a checkpoint written before
    steps were counted, `continue_after(epochs)` numbers the next step (epoch - 1) * steps per
    epoch + 1.
    """

    def __init__(self):
        self.count = 0
        self._epoch_started_at = 0
        self._uncounted_epochs: int | None = None

    def state_dict(self) -> dict:
        return {"global_step": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = self._epoch_started_at = int(state["global_step"])
        self._uncounted_epochs = None

    def continue_after(self, epochs: int) -> None:
        """Resuming from a checkpoint without a count, after `epochs` complete epochs."""
        self._uncounted_epochs = epochs

    def step(self, epoch: int, steps_per_epoch: int | None) -> int:
        """Count one optimizer step of `epoch`; return its global number (the first step is 1)."""
        if self._uncounted_epochs is not None:
            self.count = self._epoch_started_at = (epoch - 1) * (steps_per_epoch or 1)
            self._uncounted_epochs = None
        self.count += 1
        return self.count

    def end_epoch(self) -> int:
        """The step an epoch's numbers are written at: its last step (an epoch without counted
        steps counts as one, so that every epoch has its own step)."""
        if self._uncounted_epochs is not None:
            self.count = self._epoch_started_at = self._uncounted_epochs
            self._uncounted_epochs = None
        if self.count == self._epoch_started_at:
            self.count += 1
        self._epoch_started_at = self.count
        return self.count


def history_scalars(entry: dict) -> dict[str, float]:
    """{tag: value} for every number of a history entry (tags are key paths joined by "/")."""
    scalars = {}
    for path, value in _leaves(entry):
        if is_number(value):
            scalars["/".join(path)] = float(value)
        elif isinstance(value, list) and value and all(is_number(item) for item in value):
            under_routing = len(path) >= 3 and path[-3] == "routing" and path[-1] == "usage"
            for index, item in enumerate(value):
                name = f"expert_{index}" if under_routing else str(index)
                scalars["/".join(path + (name,))] = float(item)
    return scalars


def _leaves(node, path: tuple[str, ...] = ()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, path + (str(key),))
    else:
        yield path, node


class EventLog:
    """TensorBoard event files of one run, written through torch's SummaryWriter.

    The writer opens at the first event (so a run that fails before training writes none) with
    ``purge_step`` at that event's step: events of earlier processes from that step on are
    superseded.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._writer = None
        self._pending = []  # (step, {name: value}, names of the tensor values, those values stacked [N])

    def write_step(self, step: int, loss: torch.Tensor, components: dict) -> None:
        """``train_step/loss`` and ``train_step/<component>`` of one optimizer step. Tensors stay on
        their device until STEPS_PER_READ steps are queued or the log is flushed (every epoch): then
        one host read takes them all, so a training step does not wait for the device."""
        values = {"loss": loss, **components}
        tensors = {name: value for name, value in values.items() if isinstance(value, torch.Tensor)}
        stacked = None
        if tensors:
            device = next(iter(tensors.values())).device
            stacked = torch.stack([value.detach().float().reshape(()).to(device) for value in tensors.values()])
        self._pending.append((step, values, list(tensors), stacked))
        if len(self._pending) >= STEPS_PER_READ:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        stacks = [stacked for *_, stacked in pending if stacked is not None]
        read = torch.cat([s.to(stacks[0].device) for s in stacks]).tolist() if stacks else []
        writer, offset = self._open(pending[0][0]), 0
        for step, values, names, _ in pending:
            step_read = dict(zip(names, read[offset:offset + len(names)]))
            offset += len(names)
            for name, value in values.items():
                writer.add_scalar(f"{STEP_SECTION}/{name}", step_read[name] if name in step_read else float(value),
                                  step)

    def write_epoch(self, entry: dict, step: int) -> None:
        """Every number of a history entry (see `history_scalars`), then flush."""
        self._write_pending()
        writer = self._open(step)
        for tag, value in history_scalars(entry).items():
            writer.add_scalar(tag, value, step)
        writer.flush()

    def write_images(self, images: dict[str, np.ndarray], step: int) -> None:
        """``preview/<name>`` for each uint8 [H, W, 3] image, then flush."""
        for name, image in images.items():
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"preview image {name!r}: expected uint8 [H, W, 3], got {image.dtype} "
                                 f"{list(image.shape)}")
        self._write_pending()
        writer = self._open(step)
        for name, image in images.items():
            writer.add_image(f"{PREVIEW_SECTION}/{name}", np.asarray(image), step, dataformats="HWC")
        writer.flush()

    def flush(self) -> None:
        self._write_pending()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        self._write_pending()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self, step: int):
        if self._writer is None:
            from torch.utils.tensorboard import (
                SummaryWriter,  # imported here: about a second, spent only when used
            )

            self.folder.mkdir(parents=True, exist_ok=True)
            _wait_for_a_later_file_name(self.folder)
            self._writer = SummaryWriter(str(self.folder), purge_step=step)
        return self._writer


def _wait_for_a_later_file_name(folder: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the creation
    time in whole seconds: a file opened in the same second as an earlier one could sort before it
    (by process id), so wait for the next second in that case."""
    latest = -math.inf
    for path in folder.glob(EVENT_FILE_PREFIX + "*"):
        seconds = path.name[len(EVENT_FILE_PREFIX):].split(".", 1)[0]
        if seconds.isdigit():
            latest = max(latest, int(seconds))
    now = time.time()
    if int(now) == latest:
        time.sleep(1.01 - (now - int(now)))
