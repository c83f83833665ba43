"""The run harness every train script shares: config, seeding, device/AMP, run folder, epoch loop.

A train script reads like an experiment:

    CONFIG = {"seed": 0, "device": "auto", "run": {"name": "resnet50_classifier"}, "model": {...}, ...}
    DEMO = {"train.epochs": 6, ...}                      # applied by --demo, before --set

    def main(config):
        with harness.Run(config) as run:                  # device, process group, seeds, saved/<name>/
            model = distributed.wrap_model(build_model(config).to(run.device), run.device)
            ...
            harness.fit(run, model, optimizer, scheduler, train_one_epoch, evaluate,
                        epochs=config["train"]["epochs"], scaler=scaler, loaders=[train_loader])

    if __name__ == "__main__":
        harness.run_main(main, lambda: harness.parse_cli(CONFIG, demo_overrides=DEMO, description=__doc__))

`parse_cli` folds the command-line flags into the config, so the resolved config is one plain,
JSON-serialisable dict: `--data-root` -> data.root, `--device` -> device, `--run-name` -> run.name,
`--resume/--no-resume` -> run.resume (None = resume when a checkpoint exists), `--demo` ->
run.demo plus the script's demo overrides.

Run folder saved/<name>/: config.json, checkpoint.pth, model.pth, history.json (schema in
codebase.plots), train_log.txt, plots/*.png. Every file is replaced atomically; train_log.txt
is only appended to. `--no-resume` never touches an earlier run: when the folder already holds
one, the run goes to <name>_2 (or _3, ...) and the log says so. A run that fails with an exception
before its first checkpoint (bad data found while loading it, say) leaves the folder as it found
it: a folder it created is removed, config.json and train_log.txt are put back.

Bad input (`run_main`): config, data, weights and checkpoint errors, and missing or unreadable
files, end the script with one `error: <message>` line on stderr and exit code 2, no traceback.

Interrupts: SIGINT/SIGTERM set a flag; engines call `should_stop()` after each optimizer step
and return early; `fit` then discards the unfinished epoch, keeps the checkpoint of the last
complete epoch (so a resumed run is bit-identical to an uninterrupted one on CPU) and exits with
the command that resumes. A second signal aborts at once (writes stay atomic).
"""

import argparse
import contextlib
import copy
import difflib
import json
import math
import os
import random
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from codebase import distributed, plots
from codebase.atomic import atomic_torch_save, atomic_write, atomic_write_text, remove_stale_temporaries

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pth"
MODEL_FILE = "model.pth"
HISTORY_FILE = "history.json"
LOG_FILE = "train_log.txt"
PLOTS_FOLDER = "plots"

# Keys every run has; a script's CONFIG may override any of them.
HARNESS_DEFAULTS = {
    "seed": 0,
    "device": "auto",
    "deterministic": False,  # True: cudnn picks deterministic kernels instead of benchmarking the fastest
    "run": {"name": "run", "save_dir": "saved", "resume": None, "demo": False, "plots": True},
}


class ConfigError(ValueError):
    """A configuration value or command-line flag is wrong; the message names the key."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded or lacks what resuming needs."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; `components` maps each loss term to its value."""

    def __init__(self, message: str, step: int | None, epoch: int | None, components: dict):
        super().__init__(message)
        self.step, self.epoch, self.components = step, epoch, components


# ---------------------------------------------------------------------------------------------
# Configuration


def parse_cli(config: dict, argv: list[str] | None = None, demo_overrides: dict | None = None,
              description: str = "", validate: Callable[[dict], None] | None = None) -> dict:
    """The script's CONFIG with the command line applied, as a new plain dict.

    Order: harness defaults < CONFIG < demo overrides (with --demo) < --data-root, --device,
    --run-name, --resume/--no-resume < --set (left to right). `validate(config)` runs last and
    may raise ConfigError (see `require`).
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, nested keys with dots "
                             "(e.g. --set optim.lr=3e-4 --set data.image_size=128,192); repeatable")
    parser.add_argument("--data-root", help="dataset folder (data.root)")
    parser.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--run-name", help="run folder name under run.save_dir (run.name)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="resume from the run folder's checkpoint (default: resume when one "
                             "exists); --no-resume starts a new folder <name>_2, ... and never "
                             "deletes an earlier run")
    parser.add_argument("--demo", action="store_true",
                        help="small built-in experiment on synthetic data (the script's demo settings)")
    args = parser.parse_args(argv)

    resolved = with_defaults(config)
    if args.demo:
        for key, value in (demo_overrides or {}).items():
            set_value(resolved, key, value)
        resolved["run"]["demo"] = True
    flags = {"data.root": args.data_root, "device": args.device, "run.name": args.run_name,
             "run.resume": args.resume}
    for key, value in flags.items():
        if value is not None:
            set_value(resolved, key, value)
    resolved = apply_overrides(resolved, args.set)
    if validate is not None:
        validate(resolved)
    return resolved


def with_defaults(config: dict) -> dict:
    """A deep, JSON-plain copy of `config` with the harness's keys filled in where absent."""
    merged = copy.deepcopy(HARNESS_DEFAULTS)
    _merge_into(merged, _config_data(config, "config"))
    return merged


def apply_overrides(config: dict, assignments: Iterable[str]) -> dict:
    """A copy of `config` with each "a.b=value" applied, the text parsed to the default's type."""
    config = copy.deepcopy(config)
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set optim.lr=0.001")
        parent, leaf = _locate(config, key)
        parent[leaf] = parse_value(key, text, parent[leaf])
    return config


def set_value(config: dict, key: str, value) -> None:
    """Set an existing dotted key to an already-typed value, checked against the default's type."""
    parent, leaf = _locate(config, key)
    parent[leaf] = _coerce(key, _config_data(value, key), parent[leaf])


def get_value(config: dict, key: str):
    parent, leaf = _locate(config, key)
    return parent[leaf]


def require(config: dict, key: str, check, expected: str | None = None) -> None:
    """Raise ConfigError unless the value at `key` passes `check`.

    `check` is a predicate (`lambda p: 0 < p <= 1`, with `expected="a number in (0, 1]"`) or a
    collection of allowed values (`("resnet18", "resnet50")`).
    """
    value = get_value(config, key)
    if callable(check):
        try:
            passed = bool(check(value))
        except TypeError:
            passed = False
    else:
        passed = value in check
        expected = expected or "one of " + ", ".join(repr(choice) for choice in check)
    if not passed:
        raise ConfigError(f"{key}={value!r}: expected {expected or 'a valid value'}")


def parse_value(key: str, text: str, default):
    """Parse command-line `text` to the type of `default` (None defaults take JSON, else text)."""
    try:
        if default is None:
            return _json_or_text(text)
        if isinstance(default, (list, tuple)):
            return _parse_list(key, text, default)
        if isinstance(default, dict):
            value = json.loads(text)
            if isinstance(value, dict):
                return value
            raise ValueError(text)
        return _parse_scalar(text, default)
    except ValueError:
        raise ConfigError(f"{key}={text!r}: expected {_type_name(default)}") from None


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse_scalar(text: str, default):
    if isinstance(default, bool):
        word = text.strip().lower()
        if word in _TRUE + _FALSE:
            return word in _TRUE
        raise ValueError(text)
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def _parse_list(key: str, text: str, default) -> list:
    text = text.strip()
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError(text)
    else:
        items = [part.strip() for part in text.split(",")] if text else []
    if not default:
        return items
    return [_parse_scalar(item, default[0]) if isinstance(item, str) else _coerce(key, item, default[0])
            for item in items]


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _coerce(key: str, value, default):
    """`value` if it fits the type of `default` (ints widen to float), else ConfigError."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        fits = isinstance(value, bool)
    elif isinstance(default, int):
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        fits = plots.is_number(value)
    elif isinstance(default, (list, tuple)):
        fits = isinstance(value, list)
    else:
        fits = isinstance(value, type(default))
    if not fits:
        raise ConfigError(f"{key}={value!r}: expected {_type_name(default)}")
    if isinstance(default, float):
        return float(value)
    if isinstance(default, (list, tuple)) and default:
        return [_coerce(key, item, default[0]) for item in value]
    return value


_SCALAR_NAMES = {bool: ("a boolean (true/false, yes/no, 1/0)", "booleans"), int: ("an integer", "integers"),
                 float: ("a number", "numbers"), str: ("a string", "strings")}


def _type_name(default) -> str:
    if isinstance(default, (list, tuple)):
        element = f" of {_SCALAR_NAMES.get(type(default[0]), ('', 'values'))[1]}" if default else ""
        return f"a list{element} (JSON like [1, 2] or comma-separated like 1,2)"
    if isinstance(default, dict):
        return 'a JSON object like {"key": 1}'
    return _SCALAR_NAMES.get(type(default), (type(default).__name__,))[0]


def _locate(config: dict, key: str) -> tuple[dict, str]:
    """(section dict, leaf name) of an existing dotted key, or ConfigError with suggestions."""
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(_unknown_key_message(config, key, ".".join(parts[:depth])))
        if depth < len(parts) - 1:
            node = node[part]
    return node, parts[-1]


def _unknown_key_message(config: dict, key: str, known_prefix: str) -> str:
    keys = list(_flatten(config))
    leaf = key.rsplit(".", 1)[-1]

    def similarity(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, key, candidate).ratio()
        last = difflib.SequenceMatcher(None, leaf, candidate.rsplit(".", 1)[-1]).ratio()
        return max(whole, last)

    close = sorted((k for k in keys if similarity(k) >= 0.6), key=similarity, reverse=True)[:3]
    message = f"unknown config key {key!r}"
    if close:
        return message + "; did you mean " + " or ".join(repr(k) for k in close) + "?"
    section = get_value(config, known_prefix) if known_prefix else config
    if isinstance(section, dict):
        where = f"under {known_prefix!r}" if known_prefix else "at the top level"
        return message + f"; keys {where}: " + ", ".join(sorted(section))
    return message + f"; {known_prefix!r} is a value, not a section"


def _flatten(config: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf (an empty dict is a leaf)."""
    flat = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _merge_into(target: dict, source: dict) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def _config_data(value, key: str):
    try:
        return _plain(value, key)
    except TypeError as error:
        raise ConfigError(f"{error}; config values must be numbers, strings, booleans, None, "
                          "lists or dicts") from None


def _plain(value, key: str):
    """`value` as JSON data: tuples become lists, tensors and numpy values numbers or lists."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist() if value.ndim else value.item()
    if isinstance(value, dict):
        return {str(name): _plain(item, f"{key}.{name}") for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, key) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{key} is a {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# The script entry point

# OSErrors that mean a path the user gave is wrong; other OSErrors keep their traceback.
_PATH_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)


def run_main(main: Callable[[dict], object], make_config: Callable[[], dict]) -> None:
    """A train script's entry point: `main(make_config())`, bad input reported in one line.

    ConfigError, CheckpointError, IDRiDError, WeightsError and path errors (file not found,
    permission denied, ...) print `error: <message>` on stderr and exit with code 2; any other
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
    # Imported here: the harness itself needs neither the IDRiD reader nor torchvision.
    from codebase.backbone import WeightsError
    from codebase.idrid import IDRiDError

    if isinstance(error, (ConfigError, CheckpointError, IDRiDError, WeightsError)):
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


# ---------------------------------------------------------------------------------------------
# Seeding and data loading


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); each distributed rank gets seed + rank."""
    seed = seed + distributed.rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from non-negative integers, e.g. (seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed python and numpy from the seed torch gave this worker."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


class EpochLoader(DataLoader):
    """A DataLoader whose batches depend only on (seed, epoch): call `set_epoch` before each epoch.

    Training (`train=True`) shards and shuffles with `distributed.train_sampler` (one process:
    the whole set); evaluation keeps the order and shards without padding. Worker processes are
    seeded from (seed, epoch, rank) and are not persistent, so a resumed run draws exactly the
    batches and augmentations of an uninterrupted one. `fit(..., loaders=[...])` calls set_epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, seed: int,
                 num_workers: int = 0, **kwargs):
        sampler = (distributed.train_sampler(dataset, seed) if train
                   else distributed.eval_sampler(dataset))
        super().__init__(dataset, batch_size, sampler=sampler, num_workers=num_workers,
                         worker_init_fn=seed_worker, generator=make_generator(seed),
                         persistent_workers=False, **kwargs)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(derive_seed(self.seed, epoch, distributed.rank()))


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors and plain values (loads with weights_only)."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": numpy_state["state"]["key"].tolist(), "pos": numpy_state["state"]["pos"],
                  "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", np.array(numpy_state["key"], dtype=np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Device and mixed precision

AMP_SETTINGS = ("auto", "bf16", "fp16", "off")


def resolve_device(spec: str = "auto") -> torch.device:
    """"auto" -> cuda, then mps, then cpu. Under torchrun, CUDA means this process's local GPU."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return resolve_device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device='mps': MPS is not available here; use --device auto or cpu")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec!r}: CUDA is not available here; use --device auto or cpu")
        index = distributed.local_rank() if spec == "cuda" else _device_index(spec)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={spec!r}: GPU {index} does not exist; this machine has "
                              f"{torch.cuda.device_count()} (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    raise ConfigError(f"device={spec!r}: expected auto, cpu, cuda, cuda:N or mps")


def _device_index(spec: str) -> int:
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"device={spec!r}: expected cuda:N with N a GPU number") from None


def amp_dtype(device: torch.device, setting: str) -> torch.dtype | None:
    """Autocast dtype: "auto" = bf16 on CUDA where supported, else fp16 on CUDA, off elsewhere."""
    if setting not in AMP_SETTINGS:
        raise ConfigError(f"amp={setting!r}: expected one of {', '.join(AMP_SETTINGS)}")
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[setting]


def autocast(device: torch.device, setting: str) -> torch.autocast:
    """Context manager for the forward pass and loss (a no-op when AMP is off)."""
    dtype = amp_dtype(device, setting)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_grad_scaler(device: torch.device, setting: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16; a disabled one passes scale/step/update straight through."""
    enabled = amp_dtype(device, setting) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=enabled)


# ---------------------------------------------------------------------------------------------
# Stopping: signals, non-finite losses, progress bars

_stop_signal: int | None = None


def should_stop() -> bool:
    """True once SIGINT/SIGTERM arrived (on any rank). Engines call it after each optimizer step
    of a training loop and return early when it is true. Under DDP it is a collective (one tiny
    all-reduce), so every rank must call it at the same steps; don't call it in evaluation loops,
    whose ranks may see different numbers of batches.
    """
    return distributed.any_rank(_stop_signal is not None)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Zero the gradients, backpropagate `loss` and step, through `scaler` when it is enabled (fp16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


class LossSums:
    """Per-step loss and components summed over an epoch; `means()` gives the epoch's averages.

    Tensor components are summed where they live, so a step reads one number back from the device
    (the running loss, for the progress bar) however many components the loss has.
    """

    def __init__(self):
        self.sums, self.steps = {}, 0

    def add(self, loss: torch.Tensor, components: dict) -> float:
        """Add one step; return the running mean loss (for the progress bar)."""
        for name, value in {"loss": loss, **components}.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        return float(self.sums["loss"]) / self.steps

    def means(self) -> dict:
        return {name: float(value) / max(self.steps, 1) for name, value in self.sums.items()}


def train_steps(batches: Iterable, loss_of, optimizer: torch.optim.Optimizer, device: torch.device, amp: str,
                scaler: torch.amp.GradScaler | None, epoch: int, total: int | None = None, after_step=None) -> dict:
    """The training loop every engine runs: per batch, its loss under autocast, a finiteness check, one
    optimizer step and the progress bar; stops early (after a step) when `should_stop`.

    loss_of(batch) -> (loss, {component: tensor}, *extra); after_step(*extra), when given, sees each step's
    extra outputs (the multi-task engine's routing). Returns LossSums.means() over the steps taken.
    """
    sums = LossSums()
    bar = progress(batches, f"epoch {epoch} train", total=total)
    for batch in bar:
        with autocast(device, amp):
            loss, components, *extra = loss_of(batch)
        check_finite(loss, components, step=sums.steps + 1, epoch=epoch)
        optimizer_step(loss, optimizer, scaler)
        bar.set_postfix(loss=f"{sums.add(loss, components):.4f}")
        if after_step is not None:
            after_step(*extra)
        if should_stop():
            break
    return sums.means()


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


def progress(iterable: Iterable, desc: str = "", total: int | None = None, enabled: bool = True) -> tqdm:
    """A tqdm bar on rank 0 (when enabled; TQDM_DISABLE=1 turns all off), silent elsewhere.

    Always a tqdm object, so `set_postfix` works on every rank. Bars vanish when done; print
    other lines with `Run.log` (which uses tqdm.write) so they don't break a live bar.
    """
    disable = (not (enabled and distributed.is_main_process())
               or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"))
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=disable)


@contextlib.contextmanager
def _stop_on_signals():
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


# ---------------------------------------------------------------------------------------------
# The run folder


class Run:
    """One training run: its device, process group, seeds, and folder <save_dir>/<name>/.

    Creating it resolves `config["device"]`, joins torchrun's process group if any, seeds
    everything, and picks the folder: with run.resume None (default) it resumes when the folder
    has a checkpoint; True requires one; False never reuses a folder that holds a run, it takes
    <name>_2, <name>_3, ... instead. When resuming, the checkpoint is loaded now (`checkpoint`)
    and config keys under `must_match` (those that change parameter shapes) must equal the
    checkpoint's, else ConfigError listing them. Only rank 0 writes. Use as a context manager
    (or call `close`) to leave the process group cleanly; leaving it by an exception before the
    first checkpoint puts the folder back as it was.
    """

    def __init__(self, config: dict, must_match: Iterable[str] = ("model",)):
        self.config = with_defaults(config)
        self._before: _FolderState | None = None
        self._saved_checkpoint = False
        self.device = resolve_device(self.config["device"])
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not self.config["deterministic"]
            torch.backends.cudnn.deterministic = bool(self.config["deterministic"])
        distributed.init(self.device)
        try:
            self._open(list(must_match))
        except BaseException as error:
            if isinstance(error, Exception):
                self._undo_writes()
            distributed.shutdown(wait=False)
            raise

    def _open(self, must_match: list[str]) -> None:
        seed_everything(self.config["seed"])
        self.is_main = distributed.is_main_process()
        # Rank 0 picks the folder and loads the checkpoint; the others receive both, so every
        # rank resumes the same way even without a shared file system.
        decision = self._decide(must_match) if self.is_main else None
        self.folder, self.checkpoint, notes, error = distributed.broadcast_object(decision)
        if error is not None:
            raise error
        self.name = self.folder.name
        self.config["run"]["name"] = self.name
        self.history: list[dict] = list(self.checkpoint["history"]) if self.checkpoint else []
        self._prepare_folder()
        for note in notes:
            self.log(note)

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

    def save_history(self) -> None:
        if self.is_main:
            atomic_write_text(self.folder / HISTORY_FILE, json.dumps(self.history, indent=1) + "\n")

    def plot(self) -> None:
        """Redraw plots/*.png from the history (unless run.plots is false); failures are only logged."""
        if not (self.is_main and self.config["run"]["plots"]):
            return
        try:
            plots.plot_history(self.history, self.folder / PLOTS_FOLDER)
        except Exception as error:
            self.log(f"warning: could not draw plots: {error!r}")

    def close(self) -> None:
        distributed.shutdown()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None and issubclass(exc_type, Exception):
            self._undo_writes()
        distributed.shutdown(wait=exc_type is None)

    def _undo_writes(self) -> None:
        """Before the first checkpoint: put the folder back as `_prepare_folder` found it (rank 0)."""
        if self._before is not None and not self._saved_checkpoint:
            with contextlib.suppress(OSError):  # the error that ended the run matters more
                self._before.restore()

    def _decide(self, must_match: list[str]):
        """(folder, checkpoint or None, notes for the log, error or None) on rank 0."""
        try:
            folder, notes = _choose_folder(self.config["run"])
            path = folder / CHECKPOINT_FILE
            checkpoint = (load_checkpoint(path) if path.exists() and self.config["run"]["resume"]
                          is not False else None)
            if checkpoint is not None:
                notes += _check_compatible(folder, checkpoint["config"], self.config, must_match)
            return folder, checkpoint, notes, None
        except (ConfigError, CheckpointError) as error:
            return None, None, [], error

    def _prepare_folder(self) -> None:
        """Create the folder and write config.json (rank 0); an unwritable place is a ConfigError."""
        error = None
        if self.is_main:
            try:
                self._before = _FolderState(self.folder)
                (self.folder / PLOTS_FOLDER).mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(self.folder)
                atomic_write_text(self.folder / CONFIG_FILE, json.dumps(self.config, indent=2) + "\n")
            except OSError as failure:
                error = (f"cannot write the run folder {self.folder}: {failure.strerror or failure}; "
                         "choose another place with --set run.save_dir=DIR or --run-name NAME")
        error = distributed.broadcast_object(error)
        if error:
            raise ConfigError(error)
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

    def restore(self) -> None:
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


def _check_compatible(folder: Path, old: dict, new: dict, must_match: list[str]) -> list[str]:
    """ConfigError if keys under `must_match` differ; else log lines for the other changes."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    absent = "(absent)"
    changed = [key for key in sorted(old_flat.keys() | new_flat.keys())
               if key != "run.resume" and old_flat.get(key, absent) != new_flat.get(key, absent)]
    lines = {key: f"{key}: {old_flat.get(key, absent)!r} (checkpoint) -> {new_flat.get(key, absent)!r} (now)"
             for key in changed}
    blocking = [lines[key] for key in changed
                if any(key == prefix or key.startswith(prefix + ".") for prefix in must_match)]
    if blocking:
        raise ConfigError(
            f"cannot resume {folder}: these settings differ from its checkpoint and change the "
            "model's parameters:\n  " + "\n  ".join(blocking) +
            "\nUse the checkpoint's values, or start a new run with --no-resume or --run-name NAME.")
    return [f"setting changed since the checkpoint: {lines[key]}" for key in changed]


# ---------------------------------------------------------------------------------------------
# The epoch loop


def fit(run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
        train_one_epoch: Callable[[int], dict], evaluate: Callable[[int], dict] | None, epochs: int,
        scaler: torch.amp.GradScaler | None = None, *, loaders: Iterable[EpochLoader] = (),
        extra_state: dict | None = None) -> list[dict]:
    """Train from the run's last complete epoch up to `epochs`; return the history.

    Epochs are numbered from 1. Each epoch: `loader.set_epoch(epoch)` for each of `loaders`,
    `train_one_epoch(epoch)` -> dict, `evaluate(epoch)` -> dict (may be None), `scheduler.step()`
    (once per epoch; a per-step scheduler goes in `extra_state` instead, with scheduler=None),
    then a checkpoint, history.json, plots and one summary line. `extra_state` maps names to
    other objects with state_dict/load_state_dict to checkpoint (e.g. a learned loss weighting).
    At the end, model.pth. Interrupts and non-finite losses end the process via SystemExit
    (130/143, resp. 1) after logging, leaving checkpoint.pth at the last complete epoch.
    """
    tracked = {"model": distributed.unwrap(model), "optimizer": optimizer, "scheduler": scheduler,
               "scaler": scaler, **(extra_state or {})}
    completed = 0
    if run.checkpoint is not None:
        completed = _restore(run.checkpoint, tracked, run.config["seed"])
        run.checkpoint = None
        run.save_history()  # history.json may lag the checkpoint if a crash came between the two
        run.plot()
        run.log(f"resumed from {run.checkpoint_path} after epoch {completed}")
    loaders = list(loaders)
    try:
        with _stop_on_signals():
            for epoch in range(completed + 1, epochs + 1):
                started = time.perf_counter()
                learning_rate = optimizer.param_groups[0]["lr"]
                for loader in loaders:
                    loader.set_epoch(epoch)
                train_metrics = train_one_epoch(epoch)
                _exit_if_stopped(run, epoch, completed)
                distributed.broadcast_buffers(model)  # evaluate with the statistics that are saved
                eval_metrics = evaluate(epoch) if evaluate is not None else {}
                _exit_if_stopped(run, epoch, completed)
                if scheduler is not None:
                    scheduler.step()
                run.history.append({"epoch": epoch, "lr": learning_rate,
                                    "time": round(time.perf_counter() - started, 3),
                                    "train": _plain(train_metrics, "train"),
                                    "eval": _plain(eval_metrics, "eval")})
                _save(run, tracked, epoch)
                completed = epoch
                run.log(summary_line(run.history[-1], epochs))
                _exit_if_stopped(run, epoch, completed)
    except NonFiniteLossError as error:
        kept = f"checkpoint.pth keeps epoch {completed}" if completed else "no epoch was completed"
        run.log(f"stopped: {error}. {kept}; lower the learning rate or check the data before resuming.")
        raise SystemExit(1) from error
    run.save_model(model)
    run.log(f"done after epoch {completed}; final weights in {run.folder / MODEL_FILE}")
    return run.history


def summary_line(entry: dict, epochs: int) -> str:
    """"epoch 3/30  lr 1.00e-03  train loss 0.52  eval rg_accuracy 0.71 ...  41.7s".

    Train numbers at the top level only (the loss, not its components); eval numbers one level
    down too (per-task summaries, not per lesion).
    """
    parts = [f"epoch {entry['epoch']}/{epochs}", f"lr {entry['lr']:.2e}"]
    for section, depth in (("train", 0), ("eval", 1)):
        numbers = _shallow_numbers(entry.get(section, {}), depth)
        if numbers:
            parts.append(section + " " + " ".join(f"{name} {value:.4g}" for name, value in numbers))
    parts.append(f"{entry['time']:.1f}s")
    return "  ".join(parts)


def _shallow_numbers(metrics: dict, depth: int = 1) -> list[tuple[str, float]]:
    """Numbers at the top level and, with depth 1, one level down."""
    found = []
    for name, value in metrics.items():
        if isinstance(value, dict) and depth:
            found += [(inner, v) for inner, v in value.items() if plots.is_number(v)]
        elif plots.is_number(value):
            found.append((name, value))
    return found


def _save(run: Run, tracked: dict, epoch: int) -> None:
    """Checkpoint (every rank's RNG state gathered to rank 0), history.json and plots."""
    states = {name: obj.state_dict() for name, obj in tracked.items() if obj is not None}
    rng_states = distributed.all_gather_object(rng_state())
    if not run.is_main:
        return
    run.save_checkpoint({"epoch": epoch, **states, "rng": rng_states,
                         "config": run.config, "history": run.history})
    run.save_history()
    run.plot()


def _restore(state: dict, tracked: dict, seed: int) -> int:
    """Load every tracked object and this rank's RNG state; return the completed epoch."""
    for name, obj in tracked.items():
        saved = state.get(name)
        if obj is None or saved is None:
            continue
        if name == "scaler" and not (obj.is_enabled() and saved):
            continue
        obj.load_state_dict(saved)
    epoch = state["epoch"]
    rank_states = state.get("rng", [])
    if distributed.rank() < len(rank_states):
        set_rng_state(rank_states[distributed.rank()])
    else:
        seed_everything(derive_seed(seed, epoch, distributed.rank()))
    return epoch


def _exit_if_stopped(run: Run, epoch: int, completed: int) -> None:
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
    """This process's command line, pointed at the run's folder with --resume."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--run-name":
            skip = True
        elif arg not in ("--resume", "--no-resume") and not arg.startswith("--run-name="):
            args.append(arg)
    launcher = (["torchrun", f"--nproc_per_node={distributed.world_size()}"]
                if distributed.world_size() > 1 else ["python3"])
    return shlex.join(launcher + [sys.argv[0], *args, "--run-name", run.name, "--resume"])
