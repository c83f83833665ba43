"""The run folder saved/<name>/: choosing it, config.json, checkpoints, history, logs, plots.

Run folder saved/<name>/: config.json, checkpoint.pth, model.pth, history.json (schema in
codebase.evaluation.plots), test_metrics.json, train_log.txt, plots/*.png, tensorboard/ (event
files, unless run.tensorboard is false; see codebase.training.tensorboard). `read_history` and
`read_test_metrics` read the two JSON files of a run written by an earlier release with today's
names (codebase.training.earlier_names); a resumed run's history continues under them. Every
file is replaced atomically; train_log.txt is only appended to. `--no-resume` never touches an earlier run: when the folder
already holds one, the run goes to <name>_2 (or _3, ...) and the log says so. A run that fails
with an exception before its first checkpoint (bad data found while loading it, say) leaves the
folder as it found it: a folder it created is removed, config.json and train_log.txt are put back.
"""
import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from codebase.config import (
    RUN_RESUME_RULES,
    ConfigError,
    resume_changes,
    with_defaults,
)
from codebase.data.loaders import seed_everything
from codebase.data.splits import SPLITS_FILE
from codebase.earlier_config import upgrade_config
from codebase.errors import ProjectError
from codebase.runtime import distributed
from codebase.runtime.atomic import (
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    remove_stale_temporaries,
)
from codebase.runtime.device import resolve_device
from codebase.runtime.lock import LOCK_FILE, FolderLock, RunFolderInUse
from codebase.training.earlier_names import upgrade_history, upgrade_test_metrics
from codebase.training.tensorboard import (
    EVENT_FILE_PREFIX,
    TENSORBOARD_FOLDER,
    EventLog,
)

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pth"
MODEL_FILE = "model.pth"
BEST_MODEL_FILE = "best.pth"
TEST_METRICS_FILE = "test_metrics.json"
HISTORY_FILE = "history.json"
LOG_FILE = "train_log.txt"
PLOTS_FOLDER = "plots"
# Drawing every figure takes about 1 s of CPU for a classifier's history and 5-9 s for the multi-task
# model's nine figures (matplotlib's text layout): between epochs the figures are redrawn only once this
# many times the last drawing's time has passed since it, so drawing stays within a tenth of training.
PLOT_WAIT_FACTOR = 9.0


# What a run folder holds that only its training writes: its weights, checkpoints and records.
RECORDS = (CONFIG_FILE, CHECKPOINT_FILE, MODEL_FILE, BEST_MODEL_FILE, TEST_METRICS_FILE, HISTORY_FILE, LOG_FILE,
           SPLITS_FILE, LOCK_FILE, PLOTS_FOLDER, TENSORBOARD_FOLDER)


class CheckpointError(ProjectError, ValueError):
    """A checkpoint file cannot be loaded or lacks what resuming needs."""


class OutputError(ProjectError, ValueError):
    """An output path given to a tool would write over a run's weights, checkpoints or records."""


def is_run_folder(folder: Path) -> bool:
    """A folder a training wrote: it holds config.json or weights, a checkpoint or a history."""
    return folder.is_dir() and any((folder / name).exists() for name in
                                   (CONFIG_FILE, CHECKPOINT_FILE, MODEL_FILE, BEST_MODEL_FILE, HISTORY_FILE))


def refuse_run_records(flag: str, out: str | Path, files: tuple[str, ...] = (), folder: bool = False) -> None:
    """OutputError unless writing `out` leaves every run's records alone, checked before any work.

    `out` is an output file (with sidecar `files` named beside it) or, with `folder`, an output
    folder, which may not be a run folder itself (its files would mix with the run's). No path
    written may be, or lie inside, one of a run folder's RECORDS; links are followed.
    """
    out = Path(out)
    paths = [out.resolve()] + [out.resolve().with_name(name) for name in files]
    if folder and is_run_folder(paths[0]):
        raise OutputError(f"{flag} {out}: is the run folder {paths[0]}, whose files only its training writes; "
                          f"choose a folder of its own (e.g. {out / 'outputs'}, or one outside the run)")
    for path in paths:
        for parent in path.parents:
            if is_run_folder(parent):
                record = path.relative_to(parent).parts[0]
                if record in RECORDS:
                    raise OutputError(f"{flag} {out}: would write over {parent / record}, a record of the run "
                                      f"{parent}; choose another name (a path that is none of "
                                      f"{', '.join(RECORDS)} in a run folder)")

# The run folder


class Run:
    """One training run: its device, process group, seeds, and folder <save_dir>/<name>/.

    Creating it resolves `config["device"]`, joins torchrun's process group if any, seeds
    everything, and picks the folder: with run.resume None (default) it resumes when the folder
    has a checkpoint; True requires one; False never reuses a folder that holds a run, it takes
    <name>_2, <name>_3, ... instead. When resuming, the checkpoint is loaded now (`checkpoint`)
    and every setting that `resume_rules` (codebase.config.resume_rule; default RUN_RESUME_RULES,
    a key none covers fixes the run) says fixes the run must equal the checkpoint's, else a
    ConfigError naming each key with both values, before anything else is loaded; the settings
    that may change and did are logged, and the script applies them. Only rank 0 writes. Use as a context manager
    (or call `close`) to leave the process group cleanly; leaving it by an exception before the
    first checkpoint puts the folder back as it was.
    """

    def __init__(self, config: dict, resume_rules: dict | None = None):
        self.config = with_defaults(config)
        self._before: _FolderState | None = None
        self._saved_checkpoint = False
        self._lock: FolderLock | None = None
        self._plotted: tuple[int, float, float] | None = None  # (history entries, when drawn, seconds taken)
        self.device = resolve_device(self.config["device"])
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not self.config["deterministic"]
            torch.backends.cudnn.deterministic = bool(self.config["deterministic"])
        distributed.init(self.device)
        try:
            self._open(resume_rules or RUN_RESUME_RULES)
        except BaseException as error:
            if isinstance(error, Exception):
                self._undo_writes()
            self._release_lock()
            distributed.shutdown(wait=False)
            raise

    def _open(self, resume_rules: dict) -> None:
        seed_everything(self.config["seed"])
        self.is_main = distributed.is_main_process()
        # Rank 0 picks the folder and loads the checkpoint; the others receive both, so every
        # rank resumes the same way even without a shared file system.
        decision = self._decide(resume_rules) if self.is_main else None
        self.folder, self.checkpoint, notes, error = distributed.broadcast_object(decision)
        if error is not None:
            raise error
        self.name = self.folder.name
        self.config["run"]["name"] = self.name
        self.history: list[dict] = upgrade_history(self.checkpoint["history"]) if self.checkpoint else []
        self._prepare_folder()
        for note in notes:
            self.log(note)
        # The run's TensorBoard event log (rank 0); its file is opened at the first event.
        self.events = (EventLog(self.folder / TENSORBOARD_FOLDER)
                       if self.is_main and self.config["run"]["tensorboard"] else None)

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def log(self, message: str) -> None:
        """Print (without breaking progress bars) and append to train_log.txt; rank 0 only."""
        if not self.is_main:
            return
        tqdm.write(message)
        with open(self.folder / LOG_FILE, "a", encoding="utf-8") as log_file:
            log_file.write(message + "\n")

    def save_checkpoint(self, state: dict) -> None:
        if self.is_main:
            atomic_torch_save(state, self.checkpoint_path)
            self._saved_checkpoint = True

    def save_model(self, model: torch.nn.Module) -> None:
        """Final weights (state dict of the unwrapped model) to model.pth."""
        if self.is_main:
            atomic_torch_save(distributed.unwrap(model).state_dict(), self.folder / MODEL_FILE)

    def save_best(self, model: torch.nn.Module) -> None:
        """The weights chosen on the validation split so far (state dict of the unwrapped model) to best.pth."""
        if self.is_main:
            atomic_torch_save(distributed.unwrap(model).state_dict(), self.folder / BEST_MODEL_FILE)

    def load_best(self) -> dict:
        """best.pth as a state dict, read by rank 0 and sent to every rank (no shared file system needed)."""
        state = (torch.load(self.folder / BEST_MODEL_FILE, map_location="cpu", weights_only=True)
                 if self.is_main else None)
        return distributed.broadcast_object(state)

    def save_json(self, name: str, data) -> None:
        """A JSON file in the run folder (splits.json, test_metrics.json), written atomically by rank 0."""
        if self.is_main:
            atomic_write_text(self.folder / name, json.dumps(data, indent=1) + "\n")

    def save_splits(self, splits: dict) -> None:
        """splits.json ({side: {split: [image names]}}, codebase.data.splits.describe). A resumed run's
        split must be the one it was trained on (data.root may move; the images it names may not
        change): else a ConfigError naming the split that differs, before any state is loaded."""
        error = None
        path = self.folder / SPLITS_FILE
        if self.is_main and self.checkpoint is not None and path.is_file():
            recorded = json.loads(path.read_text())
            differing = [f"{side} {split}" for side in sorted(recorded.keys() | splits.keys())
                         for split in sorted((recorded.get(side) or {}).keys() | (splits.get(side) or {}).keys())
                         if (recorded.get(side) or {}).get(split) != (splits.get(side) or {}).get(split)]
            if differing:
                error = (f"cannot resume {self.folder}: the data at data.root={self.config['data']['root']} splits "
                         f"into other images than the run's {path} ({', '.join(differing)} differ); resume with "
                         "the data the run was trained on, or start a new run folder with --no-resume")
        error = distributed.broadcast_object(error)
        if error:
            raise ConfigError(error)
        self.save_json(SPLITS_FILE, splits)

    def save_test_metrics(self, results: dict) -> None:
        self.save_json(TEST_METRICS_FILE, results)

    def save_history(self) -> None:
        if self.is_main:
            atomic_write_text(self.folder / HISTORY_FILE, json.dumps(self.history, indent=1) + "\n")

    def plot(self, when_due: bool = False) -> None:
        """Redraw plots/*.png from the history (unless run.plots is false); failures are only logged.

        ``when_due`` (after an epoch): only if PLOT_WAIT_FACTOR times the last drawing's time has
        passed since it ended; `fit` redraws after the last epoch and on resuming, so the figures a
        finished run leaves hold every epoch (after an interrupt they may lag history.json by an
        epoch or two until the run resumes)."""
        if not (self.is_main and self.config["run"]["plots"]):
            return
        if self._plotted is not None:
            entries, drawn, seconds = self._plotted
            if entries == len(self.history) or (when_due and time.perf_counter() - drawn < PLOT_WAIT_FACTOR * seconds):
                return
        started = time.perf_counter()
        try:
            from codebase.evaluation import plots  # here, not at import: matplotlib costs a script's start about 1 s
            plots.plot_history(self.history, self.folder / PLOTS_FOLDER)
        except Exception as error:
            self.log(f"warning: could not draw plots: {error!r}")
        ended = time.perf_counter()
        self._plotted = (len(self.history), ended, ended - started)

    def close(self) -> None:
        self._close_events()
        self._release_lock()
        distributed.shutdown()

    def _close_events(self) -> None:
        if getattr(self, "events", None) is not None:
            self.events.close()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self._close_events()
        if exc_type is not None and issubclass(exc_type, Exception):
            self._undo_writes()
        self._release_lock()
        distributed.shutdown(wait=exc_type is None)

    def _undo_writes(self) -> None:
        """Before the first checkpoint: put the folder back as `_prepare_folder` found it (rank 0)."""
        if self._before is not None and not self._saved_checkpoint:
            with contextlib.suppress(OSError):  # the error that ended the run matters more
                self._before.restore()

    def _decide(self, resume_rules: dict):
        """(folder, checkpoint or None, notes for the log, error or None) on rank 0."""
        try:
            folder, notes = _choose_folder(self.config["run"])
            if folder.is_dir():  # lock before reading the checkpoint; a new folder is locked once made
                self._lock = FolderLock(folder)
                try:
                    self._lock.acquire()
                except OSError:
                    self._lock = None  # unwritable: _prepare_folder reports it
            path = folder / CHECKPOINT_FILE
            checkpoint = (load_checkpoint(path) if path.exists() and self.config["run"]["resume"]
                          is not False else None)
            if checkpoint is not None:
                notes += _check_compatible(folder, upgrade_config(checkpoint["config"]), self.config, resume_rules)
            return folder, checkpoint, notes, None
        except (ConfigError, CheckpointError, RunFolderInUse) as error:
            if isinstance(error, RunFolderInUse):
                self._lock = None
            return None, None, [], error

    def _prepare_folder(self) -> None:
        """Create the folder and write config.json (rank 0); an unwritable place is a ConfigError."""
        error = None
        if self.is_main:
            try:
                self._before = _FolderState(self.folder)
                (self.folder / PLOTS_FOLDER).mkdir(parents=True, exist_ok=True)
                if self._lock is None:
                    self._lock = FolderLock(self.folder)
                    self._lock.acquire()
                remove_stale_temporaries(self.folder)
                atomic_write_text(self.folder / CONFIG_FILE, json.dumps(self.config, indent=2) + "\n")
            except RunFolderInUse as failure:
                self._before, self._lock = None, None  # the folder belongs to the holder: undo nothing
                error = str(failure)
            except OSError as failure:
                error = (f"cannot write the run folder {self.folder}: {failure.strerror or failure}; "
                         "choose another place with --set run.save_dir=DIR or --run-name NAME")
        error = distributed.broadcast_object(error)
        if error:
            raise ConfigError(error)
        if self._lock is not None and self._lock.stale:
            self.log(f"took over the lock left by {self._lock.stale}, which has ended")
        self.log(f"run folder {self.folder} (started {time.strftime('%Y-%m-%d %H:%M:%S')}, "
                 f"device {self.device}, {distributed.world_size()} process(es))")


class _FolderState:
    """What a run folder held before the run wrote to it: enough to undo the writes a run makes
    before its first checkpoint (folders, config.json, lines of train_log.txt; on resume,
    history.json and plots are only rewritten with what they held)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.created = [path for path in (folder / PLOTS_FOLDER, folder, *folder.parents) if not path.exists()]
        config, log = folder / CONFIG_FILE, folder / LOG_FILE
        self.config = config.read_bytes() if config.is_file() else None
        self.log_size = log.stat().st_size if log.is_file() else None
        events = folder / TENSORBOARD_FOLDER
        self.event_files = set(events.glob(EVENT_FILE_PREFIX + "*")) if events.is_dir() else None

    def restore(self) -> None:
        self._remove_new_event_files()
        if self.folder not in self.created:
            config, log = self.folder / CONFIG_FILE, self.folder / LOG_FILE
            if self.config is None:
                config.unlink(missing_ok=True)
            else:
                atomic_write(config, lambda file: file.write(self.config))
            if self.log_size is None:
                log.unlink(missing_ok=True)
            elif log.is_file():
                os.truncate(log, self.log_size)
        for path in self.created:  # deepest first
            if path in (self.folder, self.folder / PLOTS_FOLDER):
                shutil.rmtree(path, ignore_errors=True)
                continue
            try:
                path.rmdir()  # a parent the run created, unless something else was written there since
            except OSError:
                break

    def _remove_new_event_files(self) -> None:
        events = self.folder / TENSORBOARD_FOLDER
        if not events.is_dir():
            return
        for path in events.glob(EVENT_FILE_PREFIX + "*"):
            if self.event_files is None or path not in self.event_files:
                path.unlink(missing_ok=True)
        if self.event_files is None:
            with contextlib.suppress(OSError):
                events.rmdir()


def read_history(folder: str | Path) -> list:
    """The run's history.json with today's names (`upgrade_history`); OSError or ValueError when
    it is missing or not JSON."""
    return upgrade_history(json.loads((Path(folder) / HISTORY_FILE).read_text(encoding="utf-8")))


def read_test_metrics(folder: str | Path) -> dict:
    """The run's test_metrics.json with today's names (`upgrade_test_metrics`); OSError or
    ValueError when it is missing or not JSON."""
    return upgrade_test_metrics(json.loads((Path(folder) / TEST_METRICS_FILE).read_text(encoding="utf-8")))


def load_checkpoint(path: str | Path) -> dict:
    """A run checkpoint (tensors on CPU), loaded with weights_only=True: it cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot be loaded safely ({error}); move it away, or pass "
                              "--no-resume to start a new run") from None
    if not (isinstance(state, dict) and {"epoch", "model", "config", "history"} <= state.keys()):
        raise CheckpointError(f"{path}: not a run checkpoint (it needs epoch, model, config and history)")
    return state


def _holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (CHECKPOINT_FILE, MODEL_FILE, HISTORY_FILE))


def _choose_folder(run_config: dict) -> tuple[Path, list[str]]:
    """(folder, notes for the log) from run.save_dir, run.name and run.resume."""
    save_dir, name, resume = Path(run_config["save_dir"]), run_config["name"], run_config["resume"]
    folder = save_dir / name
    has_checkpoint = (folder / CHECKPOINT_FILE).exists()
    if resume is True and not has_checkpoint:
        raise ConfigError(f"--resume: there is no checkpoint to resume at {folder / CHECKPOINT_FILE}; "
                          "leave out --resume to start a new run")
    if not _holds_run(folder) or (has_checkpoint and resume is not False):
        return folder, []
    index = 2
    while (save_dir / f"{name}_{index}").exists():
        index += 1
    new_folder = save_dir / f"{name}_{index}"
    reason = "--no-resume" if resume is False else "it has no checkpoint to resume"
    return new_folder, [f"{folder} holds an earlier run, which is kept ({reason}); "
                        f"this run writes to {new_folder}"]


def _check_compatible(folder: Path, old: dict, new: dict, resume_rules: dict) -> list[str]:
    """ConfigError (one line) naming every setting that fixes the run and differs from the
    checkpoint's, with both values and the way out; else log lines for the settings that may
    change and did."""
    refused, applied = resume_changes(old, new, resume_rules)
    if refused:
        raise ConfigError(
            f"cannot resume {folder}: settings that fix the run differ from its checkpoint: " + "; ".join(refused)
            + ". Resume with the checkpoint's values, or start a new run folder with --no-resume "
            "(or another --run-name NAME)")
    return [f"setting changed since the checkpoint, applied: {line}" for line in applied]
