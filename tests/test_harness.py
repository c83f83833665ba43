"""Tests of the run harness: config, seeding, device/AMP, run folder, fit, interrupts and crashes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import harness_toy
from codebase import atomic, distributed, harness
from codebase.harness import ConfigError

TOY_SCRIPT = Path(harness_toy.__file__)
REPO = TOY_SCRIPT.parents[1]

CONFIG = {
    "seed": 0,
    "run": {"name": "demo"},
    "data": {"root": "data", "image_size": [178, 268], "lesions": ["MA", "HE"], "weights": None},
    "model": {"backbone": "resnet50", "num_experts": 4, "pretrained": "imagenet",
              "task_specs": {"classification_rg": 5}},
    "optim": {"lr": 0.001, "weight_decay": 0.0001},
    "train": {"epochs": 30, "batch_size": 64, "amp": "auto", "shuffle": True},
}


# --- configuration -----------------------------------------------------------------------------

def test_set_parses_values_to_the_defaults_types():
    config = harness.apply_overrides(CONFIG, [
        "train.epochs=5", "optim.lr=3e-4", "optim.weight_decay=0", "train.shuffle=no",
        "model.backbone=resnet18", "data.image_size=128,192", "data.lesions=[\"EX\"]",
        "data.weights=[1.5, 2]", "model.task_specs.classification_rg=3",
    ])
    assert config["train"]["epochs"] == 5
    assert config["optim"]["lr"] == 3e-4
    assert config["optim"]["weight_decay"] == 0.0 and isinstance(config["optim"]["weight_decay"], float)
    assert config["train"]["shuffle"] is False
    assert config["model"]["backbone"] == "resnet18"
    assert config["data"]["image_size"] == [128, 192]
    assert config["data"]["lesions"] == ["EX"]
    assert config["data"]["weights"] == [1.5, 2]
    assert config["model"]["task_specs"] == {"classification_rg": 3}
    assert CONFIG["train"]["epochs"] == 30, "the input config must not change"


@pytest.mark.parametrize("text, expected", [("true", True), ("1", True), ("YES", True), ("on", True),
                                            ("false", False), ("0", False), ("No", False)])
def test_booleans(text, expected):
    assert harness.apply_overrides(CONFIG, [f"train.shuffle={text}"])["train"]["shuffle"] is expected


def test_none_defaults_take_json_or_text_and_dicts_take_json():
    assert harness.apply_overrides(CONFIG, ["data.weights=[1, 2]"])["data"]["weights"] == [1, 2]
    assert harness.apply_overrides(CONFIG, ["data.weights=/some/file.pth"])["data"]["weights"] == "/some/file.pth"
    specs = harness.apply_overrides(CONFIG, ['model.task_specs={"segmentation_ma": 1}'])["model"]["task_specs"]
    assert specs == {"segmentation_ma": 1}


def test_unknown_key_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'; did you mean 'optim\.lr'"):
        harness.apply_overrides(CONFIG, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="'model.num_experts'"):
        harness.apply_overrides(CONFIG, ["model.num_expert=2"])
    with pytest.raises(ConfigError, match="keys under 'optim': lr, weight_decay"):
        harness.apply_overrides(CONFIG, ["optim.zzzzzzzz=1"])


@pytest.mark.parametrize("assignment, expected", [
    ("train.epochs=ten", "an integer"), ("train.epochs=2.5", "an integer"), ("optim.lr=fast", "a number"),
    ("train.shuffle=maybe", "a boolean"), ("data.image_size=128,wide", "a list of integers"),
    ("model.task_specs=[1]", "JSON object"),
])
def test_wrong_type_names_key_value_and_type(assignment, expected):
    key, value = assignment.split("=")
    with pytest.raises(ConfigError) as error:
        harness.apply_overrides(CONFIG, [assignment])
    assert key in str(error.value) and value in str(error.value) and expected in str(error.value)


def test_set_needs_key_and_value():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        harness.apply_overrides(CONFIG, ["train.epochs"])


def test_parse_cli_flags_demo_and_order():
    demo = {"train.epochs": 6, "model.backbone": "resnet18", "data.root": "data/synthetic"}
    config = harness.parse_cli(CONFIG, ["--demo", "--set", "train.epochs=2", "--device", "cpu",
                                        "--run-name", "trial", "--no-resume"], demo_overrides=demo)
    assert config["train"]["epochs"] == 2, "--set wins over --demo"
    assert config["model"]["backbone"] == "resnet18" and config["data"]["root"] == "data/synthetic"
    assert config["device"] == "cpu" and config["run"]["name"] == "trial"
    assert config["run"]["resume"] is False and config["run"]["demo"] is True
    assert config["run"]["save_dir"] == "saved"
    assert harness.parse_cli(CONFIG, ["--data-root", "/idrid", "--resume"])["data"]["root"] == "/idrid"
    plain = harness.parse_cli({**CONFIG, "extra": (1, 2)}, [])
    assert plain["run"]["resume"] is None and plain["extra"] == [1, 2]
    assert json.loads(json.dumps(plain)) == plain


def test_bad_demo_override_and_non_json_config_are_config_errors():
    with pytest.raises(ConfigError, match="train.epoch"):
        harness.parse_cli(CONFIG, ["--demo"], demo_overrides={"train.epoch": 1})
    with pytest.raises(ConfigError, match="train.epochs=1.5"):
        harness.parse_cli(CONFIG, ["--demo"], demo_overrides={"train.epochs": 1.5})
    with pytest.raises(ConfigError, match="data.root is a PosixPath|data.root is a WindowsPath"):
        harness.parse_cli({**CONFIG, "data": {"root": Path("x")}}, [])


def test_validate_hook_with_require():
    def validate(config):
        harness.require(config, "model.backbone", ("resnet18", "resnet50"))
        harness.require(config, "train.batch_size", lambda size: size >= 1, "an integer >= 1")

    assert harness.parse_cli(CONFIG, [], validate=validate)["train"]["batch_size"] == 64
    with pytest.raises(ConfigError, match=r"train.batch_size=0: expected an integer >= 1"):
        harness.parse_cli(CONFIG, ["--set", "train.batch_size=0"], validate=validate)
    with pytest.raises(ConfigError, match="model.backbone='vgg': expected one of 'resnet18', 'resnet50'"):
        harness.parse_cli(CONFIG, ["--set", "model.backbone=vgg"], validate=validate)


# --- seeding, device, AMP ----------------------------------------------------------------------

def _draw():
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_seed_everything_and_rng_state_roundtrip_under_weights_only(tmp_path):
    harness.seed_everything(7)
    first = _draw()
    harness.seed_everything(7)
    assert _draw() == first
    np.random.randn()  # leaves a cached gaussian in numpy's state
    torch.save(harness.rng_state(), tmp_path / "rng.pth")
    expected = _draw() + (float(np.random.randn()),)
    harness.set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert _draw() + (float(np.random.randn()),) == expected


class _NoisyData(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, index):
        return torch.tensor([index, torch.rand(1).item(), float(np.random.rand()), random.random()])


def _epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return torch.cat(list(loader))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_batches_depend_only_on_seed_and_epoch(num_workers):
    def loader():
        return harness.EpochLoader(_NoisyData(), 4, train=True, seed=3, num_workers=num_workers)

    used = loader()
    for epoch in (1, 2):
        _epoch_batches(used, epoch)
    harness.seed_everything(0)
    third = _epoch_batches(used, 3)
    harness.seed_everything(0)
    assert torch.equal(_epoch_batches(loader(), 3), third)
    assert not torch.equal(_epoch_batches(loader(), 4)[:, 0], third[:, 0]), "each epoch reshuffles"
    assert sorted(third[:, 0].tolist()) == list(range(12))


def test_resolve_device_on_this_machine():
    assert harness.resolve_device("auto") == torch.device("cpu")  # CI has neither CUDA nor MPS
    assert harness.resolve_device("CPU") == torch.device("cpu")
    for spec, message in [("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"),
                          ("mps", "MPS is not available"), ("tpu", "expected auto, cpu, cuda")]:
        with pytest.raises(ConfigError, match=message):
            harness.resolve_device(spec)


def test_resolve_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert harness.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert harness.resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert harness.resolve_device("cuda") == torch.device("cuda", 1)
    assert harness.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="GPU 2 does not exist"):
        harness.resolve_device("cuda:2")


def test_amp_settings(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert harness.amp_dtype(cpu, "auto") is None and harness.amp_dtype(cpu, "off") is None
    assert harness.amp_dtype(cpu, "bf16") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert harness.amp_dtype(cuda, "auto") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert harness.amp_dtype(cuda, "auto") == torch.float16
    assert harness.amp_dtype(cuda, "fp16") == torch.float16
    with pytest.raises(ConfigError, match="amp='half'"):
        harness.amp_dtype(cpu, "half")
    assert not harness.make_grad_scaler(cpu, "auto").is_enabled()
    assert harness.make_grad_scaler(cpu, "fp16").is_enabled()
    with harness.autocast(cpu, "off"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with harness.autocast(cpu, "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16


# --- atomic writes -----------------------------------------------------------------------------

def test_atomic_write_keeps_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")

    def failing(file):
        file.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_keeps_old_file_when_the_process_is_killed_mid_write(tmp_path):
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")
    writer = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from codebase import atomic\n"
              "def write(file):\n"
              "    file.write(b'x' * 1000); file.flush(); print('writing', flush=True); time.sleep(60)\n"
              f"atomic.atomic_write({str(target)!r}, write)\n")
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait()
    assert target.read_bytes() == b"old"
    assert len(atomic.remove_stale_temporaries(tmp_path)) == 1
    assert list(tmp_path.iterdir()) == [target]


# --- runs: resume, interrupts, errors ----------------------------------------------------------

def toy_config(save_dir, **settings) -> dict:
    """The toy script's config with save_dir and `settings` ({"train__epochs": 2} = train.epochs)."""
    config = harness.with_defaults(harness_toy.CONFIG)
    config["run"]["save_dir"] = str(save_dir)
    for key, value in settings.items():
        harness.set_value(config, key.replace("__", "."), value)
    return config


def final_state(folder: Path):
    weights = torch.load(folder / "model.pth", weights_only=True)
    history = json.loads((folder / "history.json").read_text())
    return weights, [{key: value for key, value in entry.items() if key != "time"} for entry in history]


def assert_same_run(folder: Path, reference):
    weights, history = final_state(folder)
    expected_weights, expected_history = reference
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, expected_weights[name]), name
    assert history == expected_history


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final weights and history of an uninterrupted 4-epoch toy run."""
    save_dir = tmp_path_factory.mktemp("reference")
    harness_toy.main(toy_config(save_dir))
    return final_state(save_dir / "toy")


def test_run_writes_its_files_and_a_safe_checkpoint(tmp_path, reference):
    harness_toy.main(toy_config(tmp_path, run__plots=True, train__epochs=2))
    folder = tmp_path / "toy"
    names = {path.name for path in folder.iterdir()}
    assert names == {"config.json", "checkpoint.pth", "model.pth", "history.json", "train_log.txt", "plots"}
    assert {path.name for path in (folder / "plots").iterdir()} >= {"loss.png", "segmentation.png",
                                                                    "router_usage.png"}
    checkpoint = harness.load_checkpoint(folder / "checkpoint.pth")
    assert set(checkpoint) == {"epoch", "model", "optimizer", "scheduler", "scaler", "rng", "config", "history"}
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    assert json.loads((folder / "config.json").read_text()) == checkpoint["config"]
    log = (folder / "train_log.txt").read_text()
    assert "epoch 2/4" not in log and "epoch 2/2  lr 1.00e-02  train loss" in log
    history = json.loads((folder / "history.json").read_text())
    assert history[1]["eval"]["segmentation"]["MA"]["iou"] == history[1]["eval"]["accuracy"] / 2


@pytest.mark.parametrize("stop_after", [1, 3])
def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path, reference, stop_after):
    harness_toy.main(toy_config(tmp_path, train__epochs=stop_after))
    harness_toy.main(toy_config(tmp_path))
    assert_same_run(tmp_path / "toy", reference)
    log = (tmp_path / "toy" / "train_log.txt").read_text()
    assert f"resumed from {tmp_path / 'toy' / 'checkpoint.pth'} after epoch {stop_after}" in log
    assert "setting changed since the checkpoint: train.epochs" in log


def test_history_json_lagging_the_checkpoint_is_rewritten_on_resume(tmp_path, reference):
    """A crash between writing checkpoint.pth and history.json leaves history.json one epoch behind."""
    harness_toy.main(toy_config(tmp_path, train__epochs=2))
    history_path = tmp_path / "toy" / "history.json"
    history_path.write_text(json.dumps(json.loads(history_path.read_text())[:1]))
    harness_toy.main(toy_config(tmp_path))
    assert_same_run(tmp_path / "toy", reference)


@pytest.mark.parametrize("signal_name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_stops_after_the_step_and_resume_is_exact(tmp_path, reference, signal_name, code):
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        harness_toy.main(toy_config(tmp_path, toy__interrupt_at=[3, 2], toy__signal=signal_name))
    assert stop.value.code == code
    folder = tmp_path / "toy"
    assert harness.load_checkpoint(folder / "checkpoint.pth")["epoch"] == 2
    log = (folder / "train_log.txt").read_text()
    assert f"stopped by {signal_name} during epoch 3; checkpoint.pth holds epoch 2" in log
    assert "Resume with: " in log and "--run-name toy --resume" in log
    assert signal.getsignal(signal.SIGINT) is handler_before, "handlers are restored"
    harness_toy.main(toy_config(tmp_path))
    assert_same_run(folder, reference)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    harness_toy.main(toy_config(tmp_path, train__epochs=1))
    folder = tmp_path / "toy"
    before = (folder / "checkpoint.pth").read_bytes()
    with pytest.raises(SystemExit) as stop:
        harness_toy.main(toy_config(tmp_path, toy__nan_at=[2, 1]))
    assert stop.value.code == 1
    assert (folder / "checkpoint.pth").read_bytes() == before
    log = (folder / "train_log.txt").read_text()
    assert "non-finite loss nan at epoch 2, step 1; non-finite components: penalty" in log
    assert "checkpoint.pth keeps epoch 1" in log


def test_check_finite_names_components():
    harness.check_finite(torch.tensor(1.0), {"focal": torch.tensor(0.5)}, step=3, epoch=1)
    with pytest.raises(harness.NonFiniteLossError) as error:
        harness.check_finite(torch.tensor(float("inf")), {"focal": torch.tensor(0.5), "dice": float("inf")},
                             step=3, epoch=1)
    assert "epoch 1, step 3" in str(error.value) and "components: dice" in str(error.value)
    assert error.value.components == {"focal": 0.5, "dice": float("inf")}


def _snapshot(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_incompatible_resume_lists_the_differing_keys_and_changes_nothing(tmp_path):
    harness_toy.main(toy_config(tmp_path, train__epochs=1))
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        harness.Run(toy_config(tmp_path, model__hidden=32, train__lr=0.1))
    assert "model.hidden: 16 (checkpoint) -> 32 (now)" in str(error.value)
    assert "train.lr" not in str(error.value)
    assert _snapshot(tmp_path) == before


def test_no_resume_starts_a_new_folder_and_keeps_the_earlier_run(tmp_path):
    harness_toy.main(toy_config(tmp_path, train__epochs=1))
    before = _snapshot(tmp_path / "toy")
    run = harness.Run(toy_config(tmp_path, run__resume=False))
    assert run.folder == tmp_path / "toy_2" and run.checkpoint is None
    assert run.config["run"]["name"] == "toy_2"
    assert _snapshot(tmp_path / "toy") == before
    assert f"{tmp_path / 'toy'} holds an earlier run, which is kept (--no-resume)" in \
        (tmp_path / "toy_2" / "train_log.txt").read_text()
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        harness.Run(toy_config(tmp_path, run__name="fresh", run__resume=True))


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "saved"
    blocker.write_text("a file where the save folder should be")
    with pytest.raises(ConfigError, match=f"cannot write the run folder {blocker / 'toy'}"):
        harness.Run(toy_config(blocker))


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"epoch": 1, "model": Exploit(), "config": {}, "history": []}, folder / "checkpoint.pth")
    with pytest.raises(harness.CheckpointError, match="cannot be loaded safely"):
        harness.Run(toy_config(tmp_path))
    assert not marker.exists()


def test_resume_command_points_at_the_run(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["train_mlt_model.py", "--no-resume", "--run-name", "x", "--demo"])
    run = harness.Run(toy_config(tmp_path, run__name="x_2"))
    assert harness.resume_command(run) == "python3 train_mlt_model.py --demo --run-name x_2 --resume"


def test_summary_line_and_progress():
    entry = {"epoch": 3, "lr": 0.001, "time": 4.25, "train": {"loss": 0.5},
             "eval": {"grading": {"rg_kappa": 0.25, "rg_confusion": [[1]]}, "segmentation": {"MA": {"iou": 1}}}}
    assert harness.summary_line(entry, 30) == "epoch 3/30  lr 1.00e-03  train loss 0.5  eval rg_kappa 0.25  4.2s"
    bar = harness.progress(range(3), "quiet", enabled=False)
    bar.set_postfix(loss=1.0)
    assert list(bar) == [0, 1, 2]


# --- crashes and several processes -------------------------------------------------------------

def _toy_command(save_dir, *settings):
    command = [sys.executable, str(TOY_SCRIPT), "--set", f"run.save_dir={save_dir}"]
    for setting in settings:
        command += ["--set", setting]
    return command


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, reference):
    """Kill the toy run once mid-epoch and once around the end of an epoch, when it evaluates and
    writes a (deliberately large) checkpoint; then let it finish and compare with the reference."""
    command = _toy_command(tmp_path, "toy.print_steps=true", "model.ballast=1000000")
    folder = tmp_path / "toy"
    chooser = random.Random(1)
    for last_line in (f"step {chooser.randint(1, 2)} {chooser.randint(0, 4)}", "step 3 4"):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in process.stdout:
            if line.strip() == last_line:
                break
        time.sleep(chooser.uniform(0.0, 0.1))
        process.kill()
        process.wait()
        if (folder / "checkpoint.pth").exists():
            harness.load_checkpoint(folder / "checkpoint.pth")
            json.loads((folder / "history.json").read_text())
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    weights, history = final_state(folder)
    expected_weights, expected_history = reference
    assert history == expected_history
    for name, tensor in expected_weights.items():
        if name != "ballast":
            assert torch.equal(weights[name], tensor), name
    assert not list(folder.glob(".*.tmp"))


def test_two_process_gloo_run_writes_once_and_resumes_in_one_process(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *_toy_command(tmp_path, "train.epochs=2")[1:]]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    folder = tmp_path / "toy"
    log = (folder / "train_log.txt").read_text()
    assert log.count("epoch 2/2") == 1 and "2 process(es)" in log
    history = json.loads((folder / "history.json").read_text())
    assert len(history) == 2

    model = harness_toy.ToyModel(16, 0)
    model.load_state_dict(torch.load(folder / "model.pth", weights_only=True))
    loader = torch.utils.data.DataLoader(harness_toy.ToyData(20, train=False), batch_size=7)
    single = harness_toy.evaluate_model(model, loader, torch.device("cpu"))
    assert single["accuracy"] == history[-1]["eval"]["accuracy"]
    assert single["loss"] == pytest.approx(history[-1]["eval"]["loss"], abs=1e-6)

    history = harness_toy.main(toy_config(tmp_path, train__epochs=3))
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert "1 process(es)" in (folder / "train_log.txt").read_text()


def test_single_process_distributed_helpers_are_no_ops():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    tensors = [torch.ones(2)]
    distributed.all_reduce_sum(tensors)
    assert tensors[0].tolist() == [1.0, 1.0]
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, torch.device("cpu")) is model and distributed.unwrap(model) is model
    assert list(distributed.eval_sampler(list(range(5)))) == [0, 1, 2, 3, 4]
    sampler = distributed.train_sampler(list(range(5)), seed=0)
    sampler.set_epoch(1)
    assert sorted(sampler) == [0, 1, 2, 3, 4]


def test_optimizer_step_and_loss_sums():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    sums = harness.LossSums()
    for target in (1.0, 3.0):
        loss = (layer(torch.ones(1, 2)) - target).pow(2).mean()
        harness.optimizer_step(loss, optimizer, harness.make_grad_scaler(torch.device("cpu"), "off"))
        running = sums.add(loss, {"part": torch.tensor(target)})
    assert not torch.equal(before, layer.weight)
    assert running == pytest.approx(sums.means()["loss"]) and sums.means()["part"] == pytest.approx(2.0)
