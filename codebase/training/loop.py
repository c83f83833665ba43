"""The training loop: one optimizer step per batch (`run_steps`, `train_steps`) and the epochs (`fit`).

A train script reads like an experiment:

    CONFIG = {"seed": 0, "device": "auto", "run": {"name": "resnet50_classifier"}, "model": {...}, ...}
    DEMO = {"train.epochs": 6, ...}                      # applied by --demo, before --set

    def main(config):
        with Run(config) as run:                          # device, process group, seeds, saved/<name>/
            model = distributed.wrap_model(build_model(config).to(run.device), run.device)
            ...
            plan = EpochPlan(train_one_epoch, evaluate, loaders=[train_loader])
            fit(run, model, optimizer, scheduler, plan, config["train"]["epochs"], scaler)

    if __name__ == "__main__":
        run_main(main, lambda: parse_cli(CONFIG, demo_overrides=DEMO, description=__doc__))

Interrupts and non-finite losses end a run through codebase.training.stopping.
"""
import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from codebase.config import as_json_data, is_number
from codebase.data.loaders import (
    EpochLoader,
    derive_seed,
    rng_state,
    seed_everything,
    set_rng_state,
)
from codebase.runtime import distributed
from codebase.runtime.atomic import StorageError
from codebase.runtime.device import autocast, scaled
from codebase.runtime.progress import progress
from codebase.training.optim import restore_training_state
from codebase.training.run_folder import BEST_MODEL_FILE, MODEL_FILE, Run
from codebase.training.selection import Selection
from codebase.training.stopping import (
    NonFiniteLossError,
    check_finite,
    exit_if_stopped,
    resume_command,
    should_stop,
    stop_on_signals,
)
from codebase.training.tensorboard import StepCounter


PROGRESS_EVERY = 10  # steps between the progress bar's readings of the running loss


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Zero the gradients, backpropagate the (scaled, with fp16) `loss` and step (`step_optimizer`)."""
    optimizer.zero_grad(set_to_none=True)
    scaled(loss, scaler).backward()
    step_optimizer(optimizer, scaler)


def step_optimizer(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    """The optimizer step on the gradients in ``.grad``, through `scaler` when it is enabled (fp16:
    unscaled first, skipped on inf/NaN)."""
    if scaler is not None and scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


class LossSums:
    """Per-step loss and components summed over an epoch; `means()` gives the epoch's averages.

    Tensor components are summed where they live, so adding a step reads nothing back from the
    device; `running_mean` reads one number (the progress bar shows it every PROGRESS_EVERY steps).
    """

    def __init__(self):
        self.sums, self.steps = {}, 0

    def add(self, loss: torch.Tensor, components: dict) -> None:
        """Add one step."""
        for name, value in {"loss": loss, **components}.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1

    def running_mean(self) -> float:
        """The mean loss of the steps so far (one host read)."""
        return float(self.sums["loss"]) / max(self.steps, 1)

    def means(self) -> dict:
        return {name: float(value) / max(self.steps, 1) for name, value in self.sums.items()}


def train_steps(batches: Iterable, loss_of, optimizer: torch.optim.Optimizer, device: torch.device, amp: str,
                scaler: torch.amp.GradScaler | None, epoch: int, total: int | None = None) -> dict:
    """The plain training loop: per batch, loss_of(batch) -> (loss, {component: tensor}) under
    autocast, a finiteness check and one optimizer step (`run_steps` does the rest)."""
    def step(batch, number):
        with autocast(device, amp):
            loss, components = loss_of(batch)
        check_finite(loss, components, step=number, epoch=epoch)
        optimizer_step(loss, optimizer, scaler)
        return loss, components

    return run_steps(batches, step, epoch, total)


def run_steps(batches: Iterable, step: Callable, epoch: int, total: int | None = None) -> dict:
    """The loop every engine runs: per batch, step(batch, number) -> (loss, {component: tensor}) takes
    one optimizer step (number counts from 1 in the epoch); then the progress bar and the run's
    event log; stops early (after a step) when `should_stop`. Returns LossSums.means() over the
    steps taken."""
    sums = LossSums()
    bar = progress(batches, f"epoch {epoch} train", total=total)
    for batch in bar:
        loss, components = step(batch, sums.steps + 1)
        sums.add(loss, components)
        if sums.steps % PROGRESS_EVERY == 1 or PROGRESS_EVERY == 1:  # a host read: not every step
            bar.set_postfix(loss=f"{sums.running_mean():.4f}")
        record_step(epoch, total if total is not None else _length(batches), loss, components)
        if should_stop():
            break
    return sums.means()


_step_recorder: Callable[[int, int | None, torch.Tensor, dict], None] | None = None  # set by `fit`


def record_step(epoch: int, steps_per_epoch: int | None, loss: torch.Tensor, components: dict) -> None:
    """Count one optimizer step of `fit`'s current epoch and write its loss and components to the
    run's event log (TensorBoard). `run_steps` calls it; an engine with its own loop calls it
    after each optimizer step. Outside `fit` it does nothing."""
    if _step_recorder is not None:
        _step_recorder(epoch, steps_per_epoch, loss, components)


def _length(batches) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None


@dataclass
class EpochPlan:
    """What `fit` runs in each epoch and at the end of a run.

    train(epoch) -> the epoch's train metrics; evaluate(epoch) -> metrics on `split` (empty on
    epochs without evaluation; codebase.training.selection.evaluation_plan gives evaluate, split and
    test); `selection` scores each evaluation (a better score writes best.pth, its patience may stop
    training early; None: no selection); test() -> metrics of the model's current weights on the
    test split, once at the end; preview(epoch) -> {name: uint8 [H, W, 3]} images for the event log
    at each evaluation (e.g. codebase.evaluation.previews.PredictionPreview); `loaders` get
    ``set_epoch(epoch)`` before each epoch.
    """

    train: Callable[[int], dict]
    evaluate: Callable[[int], dict] | None = None
    split: str = "validation"
    selection: Selection | None = None
    test: Callable[[], dict] | None = None
    preview: Callable[[int], dict] | None = None
    loaders: Iterable[EpochLoader] = ()


def fit(run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, plan: EpochPlan,
        epochs: int, scaler: torch.amp.GradScaler | None = None, extra_state: dict | None = None) -> list[dict]:
    """Train from the run's last complete epoch up to `epochs`; return the history.

    Epochs are numbered from 1. Each epoch (see EpochPlan): `loader.set_epoch(epoch)` for each of
    `plan.loaders`, `plan.train(epoch)`, `plan.evaluate(epoch)` on `plan.split`,
    `scheduler.step()` (once per epoch; a per-step scheduler goes in `extra_state` instead, with
    scheduler=None), the model selection, then a checkpoint, history.json, plots and one summary
    line. The checkpoint holds the model, optimizer, scheduler, scaler and `extra_state` (names
    mapped to other objects with state_dict/load_state_dict, e.g. a learned loss weighting).
    At the end: model.pth (the last weights) and, with `plan.test`, test_metrics.json with the test
    metrics of the last and of the best weights. Interrupts and non-finite losses end the process
    via SystemExit (130/143, resp. 1) after logging, leaving checkpoint.pth at the last complete
    epoch. Into the run's event log (TensorBoard, see codebase.training.tensorboard) go each step's
    losses, each history entry and, at each evaluation, the images of `plan.preview`.
    """
    selection = plan.selection or Selection()
    eval_split = plan.split
    steps = StepCounter()
    tracked = {"model": distributed.unwrap(model), "optimizer": optimizer, "scheduler": scheduler,
               "scaler": scaler, "selection": selection, "step_counter": steps, **(extra_state or {})}
    completed = 0
    if run.checkpoint is not None:
        completed = _restore(run.checkpoint, tracked, run.config["seed"])
        if "step_counter" not in run.checkpoint:
            steps.continue_after(completed)  # a checkpoint written before steps were counted
        run.checkpoint = None
        run.save_history()  # history.json may lag the checkpoint if a crash came between the two
        run.plot()
        run.log(f"resumed from {run.checkpoint_path} after epoch {completed}")
    loaders = list(plan.loaders)
    try:
        with stop_on_signals(), _recording_steps(run, steps):
            for epoch in range(completed + 1, epochs + 1):
                if selection.stopped_early:
                    break
                started = time.perf_counter()
                learning_rate = optimizer.param_groups[0]["lr"]
                for loader in loaders:
                    loader.set_epoch(epoch)
                train_metrics = plan.train(epoch)
                exit_if_stopped(run, epoch, completed)
                distributed.broadcast_buffers(model)  # evaluate with the statistics that are saved
                eval_metrics = plan.evaluate(epoch) if plan.evaluate is not None else {}
                exit_if_stopped(run, epoch, completed)
                if scheduler is not None:
                    scheduler.step()
                score = selection.update(epoch, eval_metrics)
                entry = {"epoch": epoch, "lr": learning_rate, "time": round(time.perf_counter() - started, 3),
                         "train": as_json_data(train_metrics, "train"),
                         eval_split: as_json_data(eval_metrics, eval_split)}
                if score is not None:
                    entry["monitor"] = score
                run.history.append(entry)
                _write_events(run, entry, steps.end_epoch(), plan.preview if eval_metrics else None)
                if selection.improved:
                    run.save_best(model)
                _save(run, tracked, epoch)
                completed = epoch
                run.log(summary_line(run.history[-1], epochs))
                if selection.stopped_early:
                    run.log(f"early stopping after epoch {epoch}: {selection.evaluations_without_gain} evaluations "
                            f"without a better {run.config['train'].get('monitor', 'score')} than epoch "
                            f"{selection.best_epoch}'s {selection.best_score:.4g} (train.patience)")
                exit_if_stopped(run, epoch, completed)
    except StorageError as error:
        kept = f"checkpoint.pth keeps epoch {completed}" if completed else "no epoch was completed"
        then = f"resume with: {resume_command(run)}" if completed else "run the same command again"
        raise StorageError(f"{error}. {kept}; free space (or raise the limit), then {then}") from None
    except NonFiniteLossError as error:
        kept = f"checkpoint.pth keeps epoch {completed}" if completed else "no epoch was completed"
        run.log(f"stopped: {error}. {kept}; lower the learning rate or check the data before resuming.")
        raise SystemExit(1) from error
    run.plot()  # the epochs that when_due skipped drawing
    run.save_model(model)
    chosen = (f"; best weights (epoch {selection.best_epoch}, monitored {selection.best_score:.4g}) in "
              f"{run.folder / BEST_MODEL_FILE}" if selection.best_epoch is not None else "")
    run.log(f"done after epoch {completed}; final weights in {run.folder / MODEL_FILE}{chosen}")
    if plan.test is not None:
        _test_once(run, model, plan.test, completed, selection)
    return run.history


@contextlib.contextmanager
def _recording_steps(run: Run, steps: StepCounter):
    """Route `record_step` to the step counter and the run's event log while training."""
    global _step_recorder

    def record(epoch: int, steps_per_epoch: int | None, loss: torch.Tensor, components: dict) -> None:
        step = steps.step(epoch, steps_per_epoch)
        if run.events is not None:
            run.events.write_step(step, loss, components)

    previous, _step_recorder = _step_recorder, record
    try:
        yield
    finally:
        _step_recorder = previous


def _write_events(run: Run, entry: dict, step: int, preview: Callable[[int], dict] | None) -> None:
    """The history entry and the preview images into the event log (rank 0, when it is on), before
    the checkpoint: a resumed run supersedes whatever an epoch wrote after its last checkpoint."""
    if run.events is None:
        return
    run.events.write_epoch(entry, step)
    if preview is not None:
        try:
            run.events.write_images(preview(entry["epoch"]), step)
        except Exception as error:  # a broken preview must not stop the training
            run.log(f"warning: no preview images for epoch {entry['epoch']}: {error!r}")


def _test_once(run: Run, model: torch.nn.Module, test: Callable[[], dict], last_epoch: int,
               selection: Selection) -> None:
    """The test split, evaluated once at the end, for the last and for the best weights: test_metrics.json."""
    results = {"split": "test", "last": {"epoch": last_epoch, "metrics": as_json_data(test(), "test")}}
    if selection.best_epoch is not None:
        best = {"epoch": selection.best_epoch, "monitor": selection.best_score}
        if selection.best_epoch == last_epoch:
            best["metrics"] = results["last"]["metrics"]
        else:
            unwrapped = distributed.unwrap(model)
            last_state = {name: value.clone() for name, value in unwrapped.state_dict().items()}
            unwrapped.load_state_dict(run.load_best())
            best["metrics"] = as_json_data(test(), "test")
            unwrapped.load_state_dict(last_state)
        results["best"] = best
    run.save_test_metrics(results)
    chosen = results.get("best", results["last"])
    numbers = " ".join(f"{name} {value:.4g}" for name, value in _shallow_numbers(chosen["metrics"], 1)[:8])
    run.log(f"test split ({'best' if 'best' in results else 'last'} weights, epoch {chosen['epoch']}): {numbers}")


def summary_line(entry: dict, epochs: int) -> str:
    """"epoch 3/30  lr 1.00e-03  train loss 0.52  validation rg_accuracy 0.71 ...  monitor 0.63  41.7s".

    Train numbers at the top level only (the loss, not its components); evaluation numbers one
    level down too (per-task summaries, not per lesion), under the split they were measured on.
    """
    parts = [f"epoch {entry['epoch']}/{epochs}", f"lr {entry['lr']:.2e}"]
    for section, depth in (("train", 0), ("validation", 1), ("test", 1), ("eval", 1)):
        numbers = _shallow_numbers(entry.get(section, {}), depth)
        if numbers:
            parts.append(section + " " + " ".join(f"{name} {value:.4g}" for name, value in numbers))
    if "monitor" in entry:
        parts.append(f"monitor {entry['monitor']:.4g}")
    parts.append(f"{entry['time']:.1f}s")
    return "  ".join(parts)


def _shallow_numbers(metrics: dict, depth: int = 1) -> list[tuple[str, float]]:
    """Numbers at the top level and, with depth 1, one level down."""
    found = []
    for name, value in metrics.items():
        if isinstance(value, dict) and depth:
            found += [(inner, v) for inner, v in value.items() if is_number(v)]
        elif is_number(value):
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
    run.plot(when_due=True)


def _restore(state: dict, tracked: dict, seed: int) -> int:
    """Load every tracked object and this rank's RNG state; return the completed epoch. The optimizer
    and the schedule keep the settings the run has now (`restore_training_state`)."""
    restore_training_state(tracked["optimizer"], tracked["scheduler"], state.get("optimizer"), state.get("scheduler"))
    for name, obj in tracked.items():
        saved = state.get(name)
        if obj is None or saved is None or name in ("optimizer", "scheduler"):
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


