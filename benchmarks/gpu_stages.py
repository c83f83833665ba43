"""The stages of benchmarks/gpu_check.py: each measures one thing and saves every row as it goes.

A stage runs in its own process (`run`); its `Recorder` rewrites the stage's results file after
each table, row and value, so a stage killed by its time limit leaves what it had measured.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import bench_gpu
from codebase.evaluation.cost import machine

REPO = Path(__file__).resolve().parents[1]
TRAINING_KEYS = ("plain_dense", "tuned_dense", "tuned_top_p", "single_expert")  # bench_gpu.TRAINING_ROWS' order
SYNC_TEST = "test_top_p_step_synchronises_only_to_plan_its_dispatch"
PEAK_MEMORY_PROPERTY = "demo_step_peak_memory_gib"


class Recorder:
    """A stage's results: {"tables": [{"title", "header", "rows"}], "values": {name: value}, "notes": [text]}."""

    def __init__(self, path):
        self.path = Path(path)
        self.record = {"tables": [], "values": {}, "notes": []}
        self.save()

    def table(self, title, header):
        table = {"title": title, "header": list(header), "rows": []}
        self.record["tables"].append(table)
        self.save()
        return table

    def row(self, table, cells):
        table["rows"].append([str(cell) for cell in cells])
        self.save()

    def value(self, name, value):
        self.record["values"][name] = value
        self.save()

    def note(self, text):
        self.record["notes"].append(text)
        self.save()

    def save(self):
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.record, indent=1))
        temporary.replace(self.path)


def scratch():
    """A folder for the stage's files that do not go to OUT (gpu_check removes it afterwards)."""
    return Path(os.environ.get("GPU_CHECK_SCRATCH") or REPO / "saved" / "gpu_check_scratch")


def environment(recorder, args):
    device = torch.device(args.device)
    table = recorder.table("Environment", ["what", "value"])
    rows = [("device", machine(device)), ("python", sys.version.split()[0]), ("torch", torch.__version__),
            ("CUDA (torch built with)", torch.version.cuda or "none"),
            ("cuDNN", str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none")]
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        rows += [("GPUs visible", str(torch.cuda.device_count())),
                 ("compute capability", f"{properties.major}.{properties.minor}"),
                 ("GPU memory", f"{properties.total_memory / 2**30:.1f} GiB"),
                 ("bf16 supported", str(torch.cuda.is_bf16_supported()))]
    recorder.value("card", machine(device))
    for what, value in rows:
        recorder.row(table, [what, value])
    peak, dtype = bench_gpu.measured_peak(device, args.smoke)
    recorder.value("matmul_peak_flops", peak)
    recorder.row(table, [f"{dtype} matmul peak (measured, 8192^2)" if device.type == "cuda" else
                         f"{dtype} matmul peak (measured, 512^2)", f"{peak / 1e12:.1f} TFLOP/s"])


def benchmark_settings(args):
    return dict(bench_gpu.SMOKE if args.smoke else bench_gpu.REFERENCE)


def bench(recorder, args):
    device, settings = torch.device(args.device), benchmark_settings(args)
    peak = args.peak or bench_gpu.measured_peak(device, args.smoke)[0]
    table = recorder.table(bench_gpu.training_title(settings), bench_gpu.TRAINING_HEADER)
    for key, row in zip(TRAINING_KEYS, bench_gpu.training_rows(device, settings, peak)):
        recorder.row(table, bench_gpu.training_cells(row))
        recorder.value(f"train_{key}_images_per_s", row["images_per_s"])
        if "peak_gib" in row:
            recorder.value(f"train_{key}_peak_gib", row["peak_gib"])
    size = settings["size"]
    table = recorder.table(f"Inference at batch 1, {size[0]}x{size[1]}, bf16 on CUDA (target top-p <= 9 ms)",
                           ["routing", "ms/image"])
    latency = bench_gpu.inference_latency(device, size, settings["backbone"], 3, settings["repeats"],
                                          settings["warmup"])
    for name, dense in (("dense", True), ("top_p", False)):
        recorder.row(table, [name.replace("_", "-"), f"{latency[dense] * 1e3:.2f}"])
        recorder.value(f"inference_{name}_ms", latency[dense] * 1e3)
    table = recorder.table(bench_gpu.deeplab_title(settings), bench_gpu.DEEPLAB_HEADER)
    for key, row in zip(("plain", "tuned"), bench_gpu.deeplab_rows(device, settings["crop"], settings["seg_batch"],
                                                                   settings["backbone"], settings["repeats"],
                                                                   settings["warmup"])):
        recorder.row(table, [row["configuration"], f"{row['images_per_s']:.1f}", f"{row['ms_per_step']:.0f}"])
        recorder.value(f"deeplab_{key}_images_per_s", row["images_per_s"])


def cuda_tests(recorder, args):
    """pytest -m cuda over the suite in this process; one row per test as it finishes."""
    import pytest

    table = recorder.table("Tests marked cuda (pytest -m cuda)", ["test", "outcome", "seconds", "measured / reason"])
    counts = {}

    class Collect:
        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                if report.when == "teardown" and report.outcome == "passed":
                    return
                outcome = report.outcome if report.when == "call" else f"{report.outcome} ({report.when})"
                counts[report.outcome] = counts.get(report.outcome, 0) + 1
                detail = "; ".join(f"{name} {value}" for name, value in report.user_properties)
                if report.skipped and isinstance(report.longrepr, tuple):
                    detail = report.longrepr[2].removeprefix("Skipped: ")
                elif report.failed:
                    detail = (report.longreprtext.strip().splitlines() or [""])[-1][:160]
                recorder.row(table, [report.nodeid, outcome, f"{report.duration:.1f}", detail])
                recorder.value("counts", dict(counts))
                name = report.nodeid.split("::")[-1]
                if name.startswith(SYNC_TEST) and "[cuda" in name:
                    recorder.value("sync_test", report.outcome)
                for prop, value in report.user_properties:
                    if prop == PEAK_MEMORY_PROPERTY and "[cuda" in name:
                        recorder.value(prop, value)

    code = pytest.main(["-m", "cuda", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "no:xdist",
                        f"--basetemp={scratch() / 'pytest'}", f"--junitxml={args.out / 'cuda_tests.xml'}",
                        str(REPO / "tests")], plugins=[Collect()])
    recorder.value("counts", dict(counts))
    recorder.note(f"pytest exit code {int(code)} (0: every selected test passed; 5: none selected)")
    return 0 if int(code) in (0, 5) else 1


def compile_stage(recorder, args):
    device, settings = torch.device(args.device), benchmark_settings(args)
    # Inductor on a small CPU compiles for minutes: the smoke run traces with the eager backend only.
    backend = "eager" if args.smoke and device.type != "cuda" else "inductor"
    table = recorder.table(f"Compiled backbone ({backend}) against eager: tuned top-p training step, "
                           f"{settings['backbone']}, {settings['size'][0]}x{settings['size'][1]}, "
                           f"{settings['batch']}+{settings['batch']} images", ["configuration", "images/s", "ms/step",
                                                                              "first step s (compiling)"])
    eager = None
    for row in bench_gpu.compile_rows(device, settings, backend):
        first = f"{row['first_step_s']:.1f}" if "first_step_s" in row else "n/a"
        recorder.row(table, [row["configuration"], f"{row['images_per_s']:.1f}", f"{row['ms_per_step']:.0f}", first])
        key = "compiled" if "first_step_s" in row else "eager"
        recorder.value(f"compile_{key}_images_per_s", row["images_per_s"])
        if key == "eager":
            eager = row["images_per_s"]
        elif eager:
            recorder.value("compile_speedup", row["images_per_s"] / eager)


# The realistic run: the reference model (ResNet50, 3 experts, 7 tasks, 712x1072, 9+9 images a step)
# from scratch on a synthetic tree at that size; 6 epochs of 10 steps, the first 3 dense (warm-up).
SYNTHETIC_TREE = {"size": (1072, 712), "seg_train": 30, "seg_test": 6, "grade_train": 60, "grade_test": 12}
SYNTHETIC_SETTINGS = ["data.grading_size=712,1072", "data.segmentation_size=712,1072", "model.backbone=resnet50",
                      "model.aspp_channels=256", "model.decoder_channels=256", "model.head_hidden=256",
                      "train.batch_size=9", "train.iterations=10", "train.epochs=6", "train.evaluate_every=6",
                      "train.channels_last=true", "train.fullres_eval=off", "data.num_workers=8",
                      "routing.warmup_fraction=0.5"]
SMOKE_TREE = {"size": (96, 64), "seg_train": 3, "seg_test": 1, "grade_train": 6, "grade_test": 2}
SMOKE_SETTINGS = ["data.grading_size=64,96", "data.segmentation_size=64,96", "model.aspp_channels=8",
                  "model.decoder_channels=8", "model.head_hidden=8", "train.batch_size=2", "train.iterations=1",
                  "train.epochs=2", "train.evaluate_every=2", "train.fullres_eval=off", "data.validation=0",
                  "routing.warmup_fraction=0.5", "train.eval_batch_size=2"]


def synthetic_run(recorder, args):
    from codebase.data.synthetic import generate

    tree, settings = (SMOKE_TREE, SMOKE_SETTINGS) if args.smoke else (SYNTHETIC_TREE, SYNTHETIC_SETTINGS)
    root, saved = scratch() / "synthetic", scratch() / "runs"
    started = time.perf_counter()
    generate(root, seed=0, **tree)
    recorder.note(f"synthetic tree {tree['size'][0]}x{tree['size'][1]} (W x H): {tree} written in "
                  f"{time.perf_counter() - started:.0f} s")
    command = [sys.executable, str(REPO / "train_mlt_model.py"), "--demo", "--device", args.device, "--data-root",
               str(root), "--run-name", "synthetic_run", "--set", f"run.save_dir={saved}", "--set", "run.plots=false",
               "--set", "run.tensorboard=false"]
    for assignment in settings:
        command += ["--set", assignment]
    recorder.note("train_mlt_model.py --demo with " + " ".join(settings))
    started = time.perf_counter()
    code = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).returncode
    recorder.value("run_seconds", time.perf_counter() - started)
    recorder.value("exit_code", code)
    history_file = saved / "synthetic_run" / "history.json"
    if not history_file.exists():
        return 1
    history = json.loads(history_file.read_text())
    batch = int(next(s for s in settings if s.startswith("train.batch_size=")).split("=")[1])
    iterations = int(next(s for s in settings if s.startswith("train.iterations=")).split("=")[1])
    table = recorder.table(f"Short multi-task run on the synthetic tree ({'tiny' if args.smoke else '712x1072, ResNet50'}"
                           f"; {batch}+{batch} images a step, {iterations} steps an epoch; time: the epoch's training,"
                           " data loading included, and its evaluation where it has one)",
                           ["epoch", "routing", "seconds", "images/s", "train loss"])
    rates = {"dense": [], "top_p": []}
    for entry in history:
        routing = "dense" if entry["train"].get("dense_routing") else "top_p"
        rate = 2 * batch * iterations / entry["time"]
        evaluated = any(entry.get(split) for split in ("validation", "test", "eval"))
        if entry["epoch"] > 1 and not evaluated:  # the first epoch fills the cache and tunes cuDNN
            rates[routing].append(rate)
        recorder.row(table, [entry["epoch"], routing.replace("_", "-"), f"{entry['time']:.1f}",
                             f"{rate:.1f}" + (" (with evaluation)" if evaluated else ""),
                             f"{entry['train']['loss']:.4f}"])
    for routing, values in rates.items():
        if values:
            recorder.value(f"synthetic_{routing}_images_per_s", sum(values) / len(values))
    return code


def moe_grid(recorder, args):
    """The moe_gpu grid on the synthetic demo tree (the smoke grid's first run on a tiny tree with --smoke)."""
    from codebase.data.synthetic import generate

    grid = "smoke" if args.smoke else "moe_gpu"
    root, out = scratch() / "grid_data", scratch() / "grid"
    generate(root, seed=0, **({"size": (192, 128), "seg_train": 4, "seg_test": 2, "grade_train": 10,
                               "grade_test": 5} if args.smoke else {}))
    command = [sys.executable, str(REPO / "run_experiments.py"), grid, "--seeds", "1", "--device", args.device,
               "--data-root", str(root), "--out", str(out)]
    if args.smoke:  # one run shows the runner works; the suite tests the rest of it
        command += ["--max-runs", "1"]
    recorder.note("run_experiments.py " + " ".join(command[2:command.index("--data-root")]) +
                  " on the synthetic demo tree" + (" --max-runs 1" if args.smoke else ""))
    try:
        code = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              timeout=max(args.limit - 15, 5) if args.limit else None).returncode
    except subprocess.TimeoutExpired:
        code = None
        recorder.note("the grid ran out of time: the runs finished before are listed")
    table = recorder.table(f"The {grid} grid, seed 0: runs finished", ["configuration", "finished", "train seconds"])
    for run in sorted((out / grid).glob("*/seed_0")):
        history = run / "history.json"
        seconds = sum(e["time"] for e in json.loads(history.read_text())) if history.exists() else 0
        recorder.row(table, [run.parent.name, (run / "model.pth").exists(), f"{seconds:.0f}"])
    results = out / grid / "results.md"
    if results.exists():
        recorder.value("results_md", results.read_text())
    return 0 if code in (0, None) or (args.smoke and code == 3) else 1  # 3: stopped by --max-runs


STAGE_FUNCTIONS = {"environment": environment, "bench_gpu": bench, "cuda_tests": cuda_tests,
                   "compile": compile_stage, "synthetic_run": synthetic_run, "moe_grid": moe_grid}


def run(name, args):
    """Run stage ``name`` into the results file ``args.partial``; the process's exit code."""
    scratch().mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.partial)
    return STAGE_FUNCTIONS[name](recorder, args) or 0
