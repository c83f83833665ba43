"""Cost of each loss weighting: time per training step and peak memory, against the equal-weight sum.

    python benchmarks/bench_weighting.py                       # the demo model on the CPU
    python benchmarks/bench_weighting.py --device cuda --steps 20
    python benchmarks/bench_weighting.py --smoke               # tiny, seconds; what the tests run
    python benchmarks/bench_weighting.py --smoke --steps 3     # the tiny model, median of 3 steps

The model is train_mlt_model.py's demo recipe (ResNet18, 3 experts, 7 tasks, 128x192, one
grading and one segmentation batch of 8 per step, dense routing as in warm-up), trained on one
fixed random batch pair through the engine's own step (`codebase.engine.MultiTaskTraining`, one
step per call: forward, the weighting's backward (its combination, or its per-task gradients),
the optimizer step, FAMO's extra forward). Each
method runs in a fresh subprocess, so the peak resident memory (ru_maxrss; on CUDA the peak
allocated GPU memory) is its own. "fixed" is run first and again last: the two rows show how
much the machine's load moved the timings in between. On a shared CPU the process's own CPU time
per step (all its threads) is the steadier measure of cost; wall-clock time is what a user waits.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table, ratio  # noqa: E402
from codebase.config import parse_cli  # noqa: E402
from codebase.engine import (  # noqa: E402
    MultiTaskLoss,
    MultiTaskTraining,
    TrainStep,
    gate_weights,
)
from codebase.evaluation.cost import machine, synchronize  # noqa: E402
from codebase.model import build_model  # noqa: E402
from codebase.runtime.device import make_grad_scaler  # noqa: E402
from codebase.training.optim import make_optimizer  # noqa: E402
from codebase.training.weighting import (  # noqa: E402
    WEIGHTINGS,
    GradientWeighting,
    install_problem,
    installed_weightings,
    weighting_from_config,
)
from codebase.training.weighting.torchjd_adapter import TorchJDWeighting  # noqa: E402
from experiments.budget import MULTITASK, script_settings  # noqa: E402

SMOKE = ["data.grading_size=64,96", "data.segmentation_size=64,96", "train.batch_size=2",
         "model.aspp_channels=32", "model.decoder_channels=32", "model.head_hidden=32"]
REFERENCE = "fixed"


class RepeatedBatch:
    """A BatchStream stand-in: every epoch yields the same batch, endlessly."""

    def __init__(self, batch):
        self.batch = batch

    def epoch(self, epoch):
        while True:
            yield self.batch


def random_batches(config, generator):
    """One grading and one segmentation batch shaped as the datasets give them."""
    data, batch = config["data"], config["train"]["batch_size"]
    grading = {"image": torch.randn(batch, 3, *data["grading_size"], generator=generator),
               "rg": torch.randint(0, 5, (batch,), generator=generator),
               "mer": torch.randint(0, 3, (batch,), generator=generator)}
    segmentation = {"image": torch.randn(batch, 3, *data["segmentation_size"], generator=generator),
                    "masks": (torch.rand(batch, 5, *data["segmentation_size"], generator=generator) > 0.97)
                    .to(torch.uint8)}  # [B, 5 lesions, H, W]
    return {"grading": RepeatedBatch(grading), "segmentation": RepeatedBatch(segmentation)}


def measure(method, config, warmup, steps):
    """Train ``warmup`` + ``steps`` steps with ``method``; its step times and peak memory."""
    device = torch.device(config["device"])
    torch.manual_seed(config["seed"])
    model = build_model(config).to(device)
    loss_config = config["loss"]
    criterion = MultiTaskLoss(model.tasks, loss_config, gate_weights(loss_config))
    weighting = weighting_from_config({**loss_config, "weighting": method}, list(model.task_specs)).to(device)
    step = TrainStep(model, criterion)
    optimizer = make_optimizer([model], config["optim"]["lr"], config["optim"]["backbone_lr"],
                               config["optim"]["weight_decay"], device, undecayed=weighting.extra_parameters())
    amp = config["train"]["amp"]
    scaler = make_grad_scaler(device, amp)
    streams = random_batches(config, torch.Generator().manual_seed(config["seed"]))
    training = MultiTaskTraining(step, weighting, optimizer, device, amp, scaler)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resident_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, cpu_seconds = [], []
    for epoch in range(1, warmup + steps + 1):  # one step per call, so each step is timed alone
        synchronize(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        training.train_one_epoch(streams, epoch, 1, dense=True)
        synchronize(device)
        if epoch > warmup:
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
    return {"ms_per_step": 1e3 * statistics.median(seconds), "ms_min": 1e3 * min(seconds),
            "cpu_ms_per_step": 1e3 * statistics.median(cpu_seconds),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "rss_before_mib": resident_before / 1024,
            "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def demo_config(device, smoke, amp):
    overrides = (SMOKE if smoke else []) + [f"train.amp={amp}"]
    argv = ["--demo", "--device", device] + [arg for item in overrides for arg in ("--set", item)]
    config = parse_cli(script_settings(MULTITASK, "CONFIG"), argv, script_settings(MULTITASK, "DEMO"))
    config["device"] = str(torch.device(device))
    return config


def run_worker(method, args):
    """``method``'s measurement in a fresh interpreter (its own peak memory)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--amp", args.amp]
    if args.smoke:
        command.append("--smoke")
    finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if finished.returncode != 0:
        raise RuntimeError(f"{method}: the measurement failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--steps", type=int, help="timed steps per method (default 5, 1 with --smoke; the median is shown)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2, 1 with --smoke)")
    parser.add_argument("--amp", default="off", help="train.amp: off, bf16 or fp16 (default off)")
    parser.add_argument("--methods", default=",".join(installed_weightings()),
                        help="comma-separated weightings (default every one this environment can run: "
                             f"{','.join(installed_weightings())})")
    parser.add_argument("--smoke", action="store_true",
                        help="64x96, batch 2 (by default 1 timed step: checks the script runs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps if args.steps is not None else 1 if args.smoke else 5
    args.warmup = args.warmup if args.warmup is not None else 1 if args.smoke else 2
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in WEIGHTINGS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(WEIGHTINGS)}")
    for method in methods:
        if install_problem(method):
            parser.error(f"--methods: {install_problem(method)}")
    args.methods = [REFERENCE] + [m for m in methods if m != REFERENCE] + [REFERENCE]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, demo_config(args.device, args.smoke, args.amp), args.warmup, args.steps)))
        return 0
    config = demo_config(args.device, args.smoke, args.amp)
    data, model = config["data"], config["model"]
    load_before = os.getloadavg()
    print(f"Machine: {machine(config['device'])}; load average {' '.join(f'{v:.2f}' for v in load_before)} "
          "(1, 5, 15 min) before")
    results = [(method, run_worker(method, args)) for method in args.methods]
    load_after = os.getloadavg()
    reference = results[0][1]
    on_gpu = reference["peak_gpu_mib"] is not None
    rows = []
    for index, (method, measured) in enumerate(results):
        label = method + (" (again, last)" if index == len(results) - 1 else "")
        memory = measured["peak_gpu_mib"] if on_gpu else measured["peak_rss_mib"]
        reference_memory = reference["peak_gpu_mib"] if on_gpu else reference["peak_rss_mib"]
        kind = "shared-gradient" if issubclass(WEIGHTINGS[method], GradientWeighting) else "loss-based"
        if issubclass(WEIGHTINGS[method], TorchJDWeighting):
            kind += " (torchjd)"
        rows.append([label, kind, f"{measured['ms_per_step']:.0f}", f"{measured['ms_min']:.0f}",
                     ratio(measured["ms_per_step"], reference["ms_per_step"]), f"{measured['cpu_ms_per_step']:.0f}",
                     ratio(measured["cpu_ms_per_step"], reference["cpu_ms_per_step"]), f"{memory:.0f}",
                     f"{memory - reference_memory:+.0f}"])
    memory_name = "peak GPU MiB" if on_gpu else "peak RSS MiB"
    print_table(f"Loss weightings: {model['backbone']}, {model['num_experts']} experts, {len(model['task_specs'])} tasks, "
                f"{data['grading_size'][0]}x{data['grading_size'][1]}, {config['train']['batch_size']}+"
                f"{config['train']['batch_size']} images per step, dense routing, amp {args.amp}, "
                f"median of {args.steps} steps after {args.warmup} (one process per method)",
                ["method", "kind", "ms/step", "min ms", "vs fixed", "CPU ms/step", "vs fixed", memory_name, "vs fixed"],
                rows)
    print(f"\nload average {' '.join(f'{v:.2f}' for v in load_after)} after; peak RSS includes the interpreter "
          f"and the model ({reference['rss_before_mib']:.0f} MiB before the first step with fixed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
