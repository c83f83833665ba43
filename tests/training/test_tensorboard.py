"""TensorBoard event files of a run: per-step losses, every history number, previews, resume."""
import json
import math
from pathlib import Path

import harness_toy
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from toy_runs import toy_config

from codebase.training import tensorboard
from codebase.training.loop import EpochPlan, fit, train_steps
from codebase.training.run_folder import Run
from codebase.training.tensorboard import (
    EVENT_FILE_PREFIX,
    TENSORBOARD_FOLDER,
    EventLog,
    StepCounter,
    history_scalars,
)

STEPS_PER_EPOCH = 5  # the toy: 40 samples, batches of 8
STEP_TAGS = {"train_step/loss", "train_step/cross_entropy", "train_step/penalty"}
EPOCH_TAGS = {
    "epoch", "lr", "time", "monitor", "train/loss", "train/loss_cross_entropy", "validation/loss",
    "validation/accuracy", "validation/segmentation/MA/iou", "validation/segmentation/MA/dice",
    "validation/segmentation/MA/aupr", "validation/segmentation/mean_iou",
    "validation/routing/segmentation_ma/experts_per_image", "validation/routing/segmentation_ma/usage/expert_0",
    "validation/routing/segmentation_ma/usage/expert_1"}


def read_events(folder: Path) -> EventAccumulator:
    """Every event of the run folder's log, as TensorBoard reads it (purges applied)."""
    events = EventAccumulator(str(folder / TENSORBOARD_FOLDER), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def scalar_series(events: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def event_files(folder: Path) -> list[Path]:
    return sorted((folder / TENSORBOARD_FOLDER).glob(EVENT_FILE_PREFIX + "*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The folder of an uninterrupted 4-epoch toy run."""
    save_dir = tmp_path_factory.mktemp("reference")
    harness_toy.main(toy_config(save_dir))
    return save_dir / "toy"


def test_event_file_holds_each_step_and_every_number_of_the_history(reference):
    events = read_events(reference)
    series = scalar_series(events)
    assert set(series) == STEP_TAGS | EPOCH_TAGS
    steps = list(range(1, 4 * STEPS_PER_EPOCH + 1))
    for tag in STEP_TAGS:
        assert [step for step, _ in series[tag]] == steps, tag
    history = json.loads((reference / "history.json").read_text())
    epoch_steps = [entry["epoch"] * STEPS_PER_EPOCH for entry in history]
    for tag in EPOCH_TAGS:
        assert [step for step, _ in series[tag]] == epoch_steps, tag
    # TensorBoard stores float32: the values are history.json's, to float32 precision
    for index, entry in enumerate(history):
        assert series["validation/segmentation/MA/aupr"][index][1] == pytest.approx(
            entry["validation"]["segmentation"]["MA"]["aupr"], rel=1e-6)
        assert series["validation/routing/segmentation_ma/usage/expert_1"][index][1] == pytest.approx(
            entry["validation"]["routing"]["segmentation_ma"]["usage"][1], rel=1e-6)
        assert series["lr"][index][1] == pytest.approx(entry["lr"], rel=1e-6)
        assert series["monitor"][index][1] == pytest.approx(entry["monitor"], rel=1e-6)
        assert series["epoch"][index][1] == entry["epoch"]
        # the toy's epoch loss is the mean of its step losses
        losses = [value for step, value in series["train_step/loss"]
                  if index * STEPS_PER_EPOCH < step <= (index + 1) * STEPS_PER_EPOCH]
        assert sum(losses) / len(losses) == pytest.approx(entry["train"]["loss"], rel=1e-5)
    images = events.Images("preview/first_layer")
    assert [image.step for image in images] == epoch_steps  # one per evaluation
    assert (images[0].width, images[0].height) == (8, 16)  # the toy's first layer: 16 x 8 weights


def test_resumed_run_continues_the_curves_without_repeating_steps(tmp_path, reference):
    with pytest.raises(SystemExit):
        harness_toy.main(toy_config(tmp_path, toy__interrupt_at=[3, 1]))  # stops after step 2 of epoch 3
    folder = tmp_path / "toy"
    written = [event.step for event in EventFileLoader(str(event_files(folder)[0])).Load()
               if event.summary.value and event.summary.value[0].tag == "train_step/loss"]
    assert written[-2:] == [11, 12], "the stopped epoch wrote steps that the checkpoint does not hold"
    harness_toy.main(toy_config(tmp_path))  # resumes from epoch 2
    files = event_files(folder)
    assert len(files) == 2, "the resumed process appends a new event file"
    starts = [(event.step, event.session_log.status) for event in EventFileLoader(str(files[1])).Load()
              if event.HasField("session_log")]
    assert starts == [(2 * STEPS_PER_EPOCH + 1, 1)]  # SessionLog START: purge from step 11 on
    resumed, uninterrupted = scalar_series(read_events(folder)), scalar_series(read_events(reference))
    assert set(resumed) == set(uninterrupted)
    for tag, points in resumed.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: steps repeat or go back: {steps}"
        if tag != "time":  # a CPU run resumes bit-identically, so its curves are the uninterrupted run's
            assert points == uninterrupted[tag], tag


def test_tensorboard_off_writes_no_event_file(tmp_path):
    harness_toy.main(toy_config(tmp_path, train__epochs=1, run__tensorboard=False))
    assert not list(tmp_path.rglob(EVENT_FILE_PREFIX + "*"))
    assert not (tmp_path / "toy" / TENSORBOARD_FOLDER).exists()


def test_train_steps_logs_each_step_and_fit_each_epoch_at_its_last_step(tmp_path):
    """An engine on `train_steps` gets per-step logging; the steps continue across epochs."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]

    def loss_of(batch):
        inputs, targets = batch
        squared = (model(inputs) - targets).pow(2).mean()
        return squared, {"squared": squared, "constant": 0.5}

    def train_one_epoch(epoch):
        return train_steps(batches, loss_of, optimizer, torch.device("cpu"), "off", None, epoch)

    with Run(toy_config(tmp_path, run__name="steps", run__plots=False)) as run:
        history = fit(run, model, optimizer, None, EpochPlan(train_one_epoch), epochs=2)
    series = scalar_series(read_events(tmp_path / "steps"))
    assert [step for step, _ in series["train_step/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [value for _, value in series["train_step/constant"]] == [0.5] * 6
    assert series["train_step/squared"] == series["train_step/loss"]
    assert [step for step, _ in series["train/loss"]] == [3, 6]
    assert series["train/loss"][1][1] == pytest.approx(history[1]["train"]["loss"], rel=1e-6)
    assert torch.load(tmp_path / "steps" / "checkpoint.pth", weights_only=True)["step_counter"] == {"global_step": 6}


def test_history_scalars_flatten_numbers_and_lists_of_numbers():
    entry = {"epoch": 2, "lr": 0.001, "train": {"loss": 0.5, "task_weights": {"classification_rg": 1.25}},
             "validation": {"grading": {"rg_kappa": 0.7, "rg_confusion": [[1, 0], [0, 1]], "note": "text"},
                            "routing": {"segmentation_ma": {"usage": [0.25, 0.75], "experts_per_image": 1.5}},
                            "per_class": [0.1, 0.2], "flag": True, "missing": None}}
    assert history_scalars(entry) == {
        "epoch": 2.0, "lr": 0.001, "train/loss": 0.5, "train/task_weights/classification_rg": 1.25,
        "validation/grading/rg_kappa": 0.7,
        "validation/routing/segmentation_ma/usage/expert_0": 0.25,
        "validation/routing/segmentation_ma/usage/expert_1": 0.75,
        "validation/routing/segmentation_ma/experts_per_image": 1.5,
        "validation/per_class/0": 0.1, "validation/per_class/1": 0.2}


def test_step_counter_continues_from_the_checkpoint_or_from_the_epoch_for_an_older_one():
    counter = StepCounter()
    assert [counter.step(1, 3) for _ in range(3)] == [1, 2, 3] and counter.end_epoch() == 3
    assert counter.end_epoch() == 4, "an epoch without counted steps still gets its own step"
    resumed = StepCounter()
    resumed.load_state_dict(counter.state_dict())
    assert resumed.step(3, 3) == 5
    older = StepCounter()
    older.continue_after(2)  # a checkpoint after epoch 2 that has no count: (epoch - 1) * steps + step
    assert older.step(3, 10) == 21 and older.step(3, 10) == 22 and older.end_epoch() == 22
    without_steps = StepCounter()
    without_steps.continue_after(2)
    assert without_steps.end_epoch() == 3


def test_a_run_that_fails_before_its_first_checkpoint_takes_its_event_file_away(tmp_path):
    earlier = tmp_path / "toy" / TENSORBOARD_FOLDER
    EventLog(earlier).write_epoch({"epoch": 1, "lr": 0.1}, 5)  # a folder already holding an event file
    kept = event_files(tmp_path / "toy")
    with pytest.raises(RuntimeError, match="bad batch"):
        with Run(toy_config(tmp_path)) as run:
            run.events.write_step(1, torch.tensor(math.pi), {})
            run.events.flush()
            assert len(event_files(tmp_path / "toy")) == 2
            raise RuntimeError("bad batch")
    assert event_files(tmp_path / "toy") == kept


def test_step_events_are_read_from_the_device_in_batches_and_at_every_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard, "STEPS_PER_READ", 2)
    log = EventLog(tmp_path / "run" / TENSORBOARD_FOLDER)
    log.write_step(1, torch.tensor(1.5), {"part": torch.tensor(0.25), "plain": 3})
    assert not event_files(tmp_path / "run")  # queued: nothing read back yet
    log.write_step(2, torch.tensor(2.5), {"part": torch.tensor(0.5), "plain": 4})
    assert len(event_files(tmp_path / "run")) == 1  # two steps queued: read together and written
    log.write_step(3, torch.tensor(3.5), {"part": torch.tensor(0.75), "plain": 5})
    log.close()  # writes the queued step
    series = scalar_series(read_events(tmp_path / "run"))
    assert series == {"train_step/loss": [(1, 1.5), (2, 2.5), (3, 3.5)],
                      "train_step/part": [(1, 0.25), (2, 0.5), (3, 0.75)],
                      "train_step/plain": [(1, 3.0), (2, 4.0), (3, 5.0)]}
