"""The scripts on each device: the three train scripts end to end, train.compile, a checkpoint that
moves between the CPU and a GPU, predict.py, export.py and the sliding window on a run trained
there, torchrun, and the collectives and a DDP step in a process group (NCCL on CUDA, gloo on the
CPU). Each test runs on the CPU too, but torchrun (two CPU processes: tests/test_engine.py); its ``cuda``
cases need a GPU."""
import gc
import json
import socket
import subprocess
import sys

import pytest
import torch
import torch._dynamo  # noqa: F401  before any process group exists (see codebase.runtime.distributed.init)
import torch.distributed as dist
from devices import CPU_AND_CUDA, CUDA, on
from scripts.tiny_training import COMMON, ENV, REPO, TRAINERS
from step_setup import batch_pair, make_training

from codebase.config import parse_cli
from codebase.evaluation.sliding_window import predict_sliding_window
from codebase.runtime import distributed
from inference.runs import load_run

pytestmark = pytest.mark.slow  # trains models and runs scripts in subprocesses


def train(kind, device, root, save_dir, name, *extra):
    """The script's tiny run (tests/scripts/tiny_training.py) on ``device``, in this process; its folder."""
    script, sets = TRAINERS[kind]
    argv = ["--demo", "--device", device, "--data-root", str(root), "--run-name", name,
            "--set", f"run.save_dir={save_dir}"]
    for assignment in COMMON + sets + list(extra):
        argv += ["--set", assignment]
    script.main(parse_cli(script.CONFIG, argv, script.DEMO, validate=script.validate))
    return save_dir / name


def finite_weights(folder):
    state = torch.load(folder / "model.pth", map_location="cpu", weights_only=True)
    return all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())


@pytest.mark.parametrize("device", CPU_AND_CUDA)
@pytest.mark.parametrize("kind", list(TRAINERS))
def test_each_train_script_trains_end_to_end_on_the_device(kind, device, synthetic_root, tmp_path):
    """Default amp (bf16 on a GPU that has it) and, for the multi-task model, channels_last."""
    extra = ["train.channels_last=true"] if kind != "classifier" else []
    folder = train(kind, device, synthetic_root, tmp_path, f"{kind}_{device}", *extra)
    config = json.loads((folder / "config.json").read_text())
    assert config["device"] == device and config["train"]["amp"] == "auto"
    history = json.loads((folder / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1]
    assert torch.isfinite(torch.tensor(history[0]["train"]["loss"]))
    assert json.loads((folder / "test_metrics.json").read_text())["last"]["metrics"]
    assert finite_weights(folder) and (folder / "checkpoint.pth").exists()


@pytest.mark.parametrize("device", [CUDA])  # on the CPU inductor builds C++ for many minutes (and needs a toolchain)
def test_train_compile_trains_the_compiled_backbone(device, synthetic_root, tmp_path):
    folder = train("multitask", device, synthetic_root, tmp_path, "compiled", "train.compile=true")
    history = json.loads((folder / "history.json").read_text())
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["train"]["loss"]))
    plain = torch.load(folder / "model.pth", map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in key for key in plain)  # compiled in place: the checkpoint's names are unchanged
    assert finite_weights(folder)


@pytest.mark.parametrize("first, second", [on("cpu", "cpu", id="cpu-cpu"), on("cuda", "cpu", id="cuda-cpu"),
                                           on("cpu", "cuda", id="cpu-cuda")])
def test_a_checkpoint_written_on_one_device_resumes_on_the_other(first, second, synthetic_root, tmp_path):
    folder = train("multitask", first, synthetic_root, tmp_path, "moving")
    written = json.loads((folder / "history.json").read_text())
    train("multitask", second, synthetic_root, tmp_path, "moving", "train.epochs=2")
    history = json.loads((folder / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[0] == written[0]  # resumed, not trained again
    assert "resumed from" in (folder / "train_log.txt").read_text()
    assert finite_weights(folder)


def run_script(script, *args):
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=600)


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_predict_export_and_the_sliding_window_on_a_run_trained_on_the_device(device, synthetic_root, tmp_path):
    folder = train("multitask", device, synthetic_root, tmp_path, "served")
    images = sorted((synthetic_root / "B. Disease Grading" / "1. Original Images" / "b. Testing Set").glob("*.jpg"))[:2]
    assert images
    done = run_script("predict.py", "--run", folder, "--device", device, "--out", tmp_path / "predicted",
                      "--sliding", "64,64", *images)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads((tmp_path / "predicted" / "predictions.json").read_text())
    assert len(predictions["images"]) == len(images) and not predictions["failed"]
    # a run trained on the CPU exports as tests/inference/test_export.py checks (half of this test's time there)
    exported = (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")) if device != "cpu" else ()
    for form, file in exported:
        done = run_script("export.py", "--run", folder, "--format", form, "--out", tmp_path / file)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (tmp_path / file).stat().st_size > 0

    run = load_run(folder)
    model = run.model.eval()
    image = torch.randn(1, 3, 100, 140, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for where in ("cpu", device):
        model.to(where)
        with torch.no_grad():
            outputs[where] = predict_sliding_window(
                lambda x: torch.cat(list(model(x, side="segmentation")["logits"].values()), dim=1), image.to(where),
                (64, 64), overlap=0.25).cpu()
    assert outputs["cpu"].shape == (1, len(model.segmentation_tasks), 100, 140)
    torch.testing.assert_close(outputs[device], outputs["cpu"], rtol=0, atol=2e-3)  # probabilities


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("device", [CUDA])
def test_torchrun_trains_on_every_gpu_present(device, synthetic_root, tmp_path):
    """One process per GPU (NCCL from two GPUs on; a one-GPU machine runs one process). Two gloo processes
    on the CPU: tests/test_engine.py's test_two_processes_write_once_match_single_process_evaluation_and_resume_in_one."""
    processes = torch.cuda.device_count()
    script, sets = TRAINERS["multitask"]
    argv = ["--demo", "--device", device, "--data-root", str(synthetic_root), "--run-name", "spread",
            "--set", f"run.save_dir={tmp_path}"]
    for assignment in COMMON + sets + ["data.validation=0", "train.eval_batch_size=1"]:
        argv += ["--set", assignment]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(REPO / "train_mlt_model.py"), *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    log = (tmp_path / "spread" / "train_log.txt").read_text()
    assert log.count("epoch 1/1") == 1
    if processes > 1:
        assert f"{processes} process(es)" in log


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_collectives_and_a_ddp_step_in_a_process_group(device, monkeypatch):
    """A one-process group with the backend the device gets under torchrun (NCCL on CUDA): the
    reductions the metrics and weightings use, and a DDP-wrapped top-p training step."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setattr(distributed, "_collective_device", torch.device(device))
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    try:
        counts = torch.arange(3.0, device=device)
        distributed.all_reduce_sum([counts])
        assert counts.tolist() == [0.0, 1.0, 2.0]
        assert torch.equal(distributed.all_reduce_mean(counts), counts)
        assert distributed.any_rank(True) and not distributed.any_rank(False)
        training = make_training(device)
        training.model.keep_skipped_experts_in_graph()
        training.step = distributed.wrap_model(training.step, torch.device(device, 0) if device == "cuda"
                                               else torch.device(device))
        assert isinstance(training.step, torch.nn.parallel.DistributedDataParallel)
        before = {name: p.detach().clone() for name, p in training.model.named_parameters()}
        for number in (1, 2):
            loss, _, _ = training.train_step(batch_pair(seed=number), number == 1, 1, number)
            assert torch.isfinite(loss)
        assert any(not torch.equal(before[name], p) for name, p in training.model.named_parameters())
        distributed.broadcast_buffers(training.step)
    finally:
        dist.destroy_process_group()
        gc.collect()
