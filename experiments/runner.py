"""Train every configuration x seed of a grid as train-script subprocesses, one after another.

A run goes to <out>/<grid>/<configuration>/seed_<S>/. A folder that holds a finished run
(model.pth, and history.json up to config.json's train.epochs) is skipped, after checking that
it was trained with the settings asked for now, and that its script, run today with the same
command line, would train it the same way (a default changed since, such as the multi-task
model's expert layout, makes the run stale: an error, never a silent mix); one with a checkpoint
is resumed by the script's own --resume. So a killed runner, re-run with the same command, carries on. A run whose
folder another live process holds (a second runner on the same grid, for example one per GPU) is
left to that process: this runner moves on, and a later run of the command finds it finished.
"""
import dataclasses
import functools
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from codebase.config import ConfigError, get_value, parse_cli, parse_value, resume_changes
from codebase.earlier_config import upgrade_config
from codebase.runtime.lock import holder
from codebase.training.run_folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    MODEL_FILE,
)
from experiments.budget import REPO, GridError, budget_overrides, cli_text, configuration_steps


@dataclass
class PlannedRun:
    configuration: str
    seed: int
    script: str
    folder: Path
    settings: list[str]  # "key=value" for --set, in order (budget, grid, configuration, command line)
    source: Path | None = None  # the run folder an upcycled run starts from (model.init_from)

    @property
    def name(self):
        return f"{self.configuration}/seed_{self.seed}"


def plan_runs(grid_name, grid, seeds, out, data_root, image_counts, common=()):
    """Every configuration x seed of the grid, with the settings each run is trained with.

    Seed by seed (every configuration with the first seed, then with the next), so a grid stopped
    early holds every configuration at the seeds it finished, which `--seeds` can then compare."""
    settings = {}
    for configuration_name, configuration in grid.configurations.items():
        steps = dataclasses.replace(grid.budget, optimizer_steps=configuration_steps(grid, configuration))
        budget = budget_overrides(configuration.script, steps, *image_counts)
        settings[configuration_name] = ([f"{key}={cli_text(value)}" for key, value in budget.items()]
                                        + list(grid.overrides) + list(configuration.overrides) + list(common))
    planned = []
    for seed in seeds:
        for configuration_name, configuration in grid.configurations.items():
            folder = Path(out) / grid_name / configuration_name / f"seed_{seed}"
            source = None
            if configuration.upcycle_from is not None:  # the source's run with the same seed, planned before
                source = Path(out) / grid_name / configuration.upcycle_from / f"seed_{seed}"
            planned.append(PlannedRun(configuration_name, seed, configuration.script, folder,
                                      settings[configuration_name] + ([f"model.init_from={source}"] if source else []),
                                      source))
    return planned


def command(run, data_root, demo, device=None):
    """The train script's command line for `run` (resuming when its folder holds a checkpoint)."""
    arguments = [sys.executable, str(REPO / run.script)] + (["--demo"] if demo else [])
    arguments += ["--data-root", str(data_root), "--run-name", run.folder.name,
                  "--set", f"run.save_dir={run.folder.parent}", "--set", f"seed={run.seed}"]
    for setting in run.settings:
        arguments += ["--set", setting]
    if device:
        arguments += ["--device", device]
    if (run.folder / CHECKPOINT_FILE).is_file():
        arguments.append("--resume")
    return arguments


def is_finished(folder):
    """True when `folder` holds model.pth and a history up to its config's last epoch."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in (MODEL_FILE, HISTORY_FILE, CONFIG_FILE)):
        return False
    try:
        history = json.loads((folder / HISTORY_FILE).read_text())
        epochs = json.loads((folder / CONFIG_FILE).read_text())["train"]["epochs"]
        return bool(history) and history[-1].get("epoch") == epochs
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # damaged: not finished
        return False


@functools.cache
def script_module(script):
    """The train script ``script`` (a path relative to the repository) imported as a module, for its
    CONFIG, DEMO and RESUME_RULES."""
    spec = importlib.util.spec_from_file_location(f"grid_script_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stale_settings(run, config, data_root, demo):
    """The settings that fix a run (the script's RESUME_RULES) in which the finished run's config
    (config.json upgraded as a resume upgrades it, codebase.earlier_config.upgrade_config) differs from what
    its script resolves today for the same command line: "key: value in the run -> value now"
    (data.root, compared by check_matches itself, and the run folder left out)."""
    module = script_module(run.script)
    arguments = [argument for argument in command(run, data_root, demo)[2:] if argument != "--resume"]
    now = parse_cli(module.CONFIG, arguments, module.DEMO)
    refused, _ = resume_changes(config, now, module.RESUME_RULES)
    return [line.replace(" (checkpoint)", " in the run").replace(" (now)", " now") for line in refused
            if not line.startswith(("data.root:", "run."))]


def check_matches(run, data_root, demo=None):
    """GridError when a finished run's config.json differs from the settings asked for now, or (with
    ``demo``, the grid's --demo flag) from what its script would train today with them."""
    path = run.folder / CONFIG_FILE
    try:
        config = upgrade_config(json.loads(path.read_text()))  # a run from before a setting: the value it had
        recorded_root = config["data"]["root"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise GridError(f"{path}: a finished run's config.json that cannot be read ({error!r}); move the run "
                        "folder away (the grid then trains it again), or choose another --out") from None
    differences = []
    expected = [f"seed={run.seed}"] + run.settings
    for setting in expected:
        key, _, text = setting.partition("=")
        try:
            saved = get_value(config, key)
            wanted = parse_value(key, text, saved)
        except ConfigError:
            differences.append(f"{key}: not in its config.json")
            continue
        if wanted != saved:
            differences.append(f"{key}: {saved!r} in the run, {wanted!r} asked for")
    if Path(recorded_root).resolve() != Path(data_root).resolve():
        differences.append(f"data.root: {recorded_root!r} in the run, {str(data_root)!r} asked for")
    if differences:
        raise GridError(f"{run.folder} holds a finished run trained with other settings:\n  "
                        + "\n  ".join(differences) + "\nMove it away, or choose another --out.")
    if demo is not None:
        stale = stale_settings(run, config, data_root, demo)
        if stale:
            raise GridError(f"{run.folder} holds a finished run that {run.script} would train differently today "
                            "(its defaults changed since):\n  " + "\n  ".join(stale)
                            + "\nMove it away (the grid then trains it again), or choose another --out.")


def train_all(planned, data_root, demo, device=None, max_runs=None, log=print):
    """Train the unfinished runs in order; stop after `max_runs` trained ones (None: all).

    Returns the number of runs still unfinished. A failing run raises RuntimeError naming it.
    """
    trained = 0
    for run in planned:
        if is_finished(run.folder):
            check_matches(run, data_root, demo)
            log(f"[experiments] {run.name}: finished run in {run.folder}, skipped")
            continue
        if max_runs is not None and trained >= max_runs:
            break
        busy = holder(run.folder)
        if busy:
            log(f"[experiments] {run.name}: being trained by {busy}, left to it")
            continue
        if run.source is not None and not is_finished(run.source):  # its source is another process's to finish
            log(f"[experiments] {run.name}: waits for {run.source} to finish (it starts from that run); "
                "run the same command again later")
            continue
        arguments = command(run, data_root, demo, device)
        log(f"[experiments] {run.name}: {'resuming' if '--resume' in arguments else 'training'} "
            f"({run.script}) in {run.folder}")
        process = subprocess.Popen(arguments, cwd=REPO)
        try:
            code = process.wait()
        except KeyboardInterrupt:  # the script got the signal too: let it keep its last epoch
            process.wait()
            raise
        if code in (130, 143):  # the script stopped on SIGINT/SIGTERM after saving its last complete epoch
            raise KeyboardInterrupt
        if code != 0 and holder(run.folder):  # another process took the folder between the check and the start
            log(f"[experiments] {run.name}: being trained by {holder(run.folder)}, left to it")
            continue
        if code != 0:
            raise RuntimeError(f"{run.name} failed (exit code {code}); see {run.folder / 'train_log.txt'}. "
                               f"Command: {subprocess.list2cmdline(arguments)}")
        trained += 1
    return sum(not is_finished(run.folder) for run in planned)
