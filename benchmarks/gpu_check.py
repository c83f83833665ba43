"""Everything worth measuring on a GPU, in one command that saves what it has measured as it goes.

    python benchmarks/gpu_check.py --out gpu_check            # a CUDA machine: about 8 minutes
    python benchmarks/gpu_check.py --smoke --device cpu --out /tmp/check   # each stage tiny on the CPU (CI)

Stages, in this order, each in its own process under its own time limit within the overall budget
(--budget, 480 s); a stage that fails or runs out of time is recorded as such and the next one runs:

1. environment: card, torch / CUDA / cuDNN versions, the bf16 matmul peak measured here;
2. bench_gpu: benchmarks/bench_gpu.py's tables (the reference configuration's training throughput
   dense, top-p and one expert, fp32 and tuned, MFU, peak memory; batch-1 latency; DeepLabV3+);
3. cuda_tests: the tests marked ``cuda`` (pytest -m cuda), one row per test with its outcome;
4. synthetic_run: a short multi-task run of train_mlt_model.py on a synthetic tree at 712x1072, to
   completion, with its step rate dense (warm-up) and top-p;
5. compile: the tuned top-p step with the backbone compiled (torch.compile) against eager;
6. moe_grid: if time is left, the ``moe_gpu`` grid (run_experiments.py) until the budget ends.

After every stage (and every row a stage measures), OUT holds: summary.md (every table, and which
targets are met, missed or unmeasured: paste it), results.json (the same as data), gpu_check.log
(every stage's output) and cuda_tests.xml (the tests' JUnit report). A stage killed by its time
limit keeps the rows it had measured.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_stages  # noqa: E402
from benchmarks.gpu_report import TARGETS, summary_markdown  # noqa: E402

# name -> (seconds on a GPU, seconds with --smoke): the stage's time limit (the budget left caps it)
# (in the order of what matters most when time runs short)
STAGES = {"environment": (45, 30), "bench_gpu": (150, 60), "cuda_tests": (200, 60), "synthetic_run": (120, 90),
          "compile": (90, 60), "moe_grid": (None, 90)}
MIN_STAGE_SECONDS = 20  # a stage that would get less is reported as not run


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (created; files in it are overwritten)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--smoke", action="store_true", help="every stage tiny: checks each one works (CI, CPU)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all stages together (default 480)")
    parser.add_argument("--stages", help=f"comma-separated subset of {', '.join(STAGES)} (default all, in order)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument("--partial", help=argparse.SUPPRESS)  # internal: the stage's results file
    parser.add_argument("--peak", type=float, help=argparse.SUPPRESS)  # internal: the measured matmul peak
    parser.add_argument("--limit", type=float, help=argparse.SUPPRESS)  # internal: the stage's seconds
    args = parser.parse_args(argv)
    chosen = list(STAGES) if args.stages is None else [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        parser.error(f"--stages {args.stages!r}: unknown stage {', '.join(unknown) or '(none given)'}; "
                     f"expected some of {', '.join(STAGES)}")
    args.stages = chosen
    return args


def stage_command(args, name, partial, peak, seconds):
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--partial", str(partial),
               "--out", str(args.out), "--device", args.device, "--limit", repr(seconds)]
    if args.smoke:
        command.append("--smoke")
    if peak:
        command += ["--peak", repr(peak)]
    return command


def run_stage(args, name, seconds, log):
    """Run one stage in a child process for at most ``seconds``; returns its record (what it saved)."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        partial = Path(scratch) / f"{name}.json"
        peak = args.results.get("environment", {}).get("values", {}).get("matmul_peak_flops")
        log.write(f"\n===== stage {name} (limit {seconds:.0f} s) =====\n")
        log.flush()
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(REPO), "GPU_CHECK_SCRATCH": scratch, "TQDM_DISABLE": "1"}
        process = subprocess.Popen(stage_command(args, name, partial, peak, seconds), cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = process.wait(timeout=seconds)
            status = "done" if code == 0 else f"failed (exit code {code}; see gpu_check.log)"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)  # the stage and whatever it started (a training, torchrun's workers)
            process.wait()
            status = f"timed out after {seconds:.0f} s (rows measured before are kept)"
        record = json.loads(partial.read_text()) if partial.exists() else {}
    record.update(status=status, seconds=round(time.perf_counter() - started, 1))
    return record


def write_outputs(out, results, meta):
    """results.json and summary.md, each replaced whole (a reader never sees half a file)."""
    for name, text in (("results.json", json.dumps({"meta": meta, "stages": results}, indent=2)),
                       ("summary.md", summary_markdown(meta, results))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        temporary.replace(out / name)


def main(argv=None):
    args = parse_args(argv)
    args.out = Path(args.out).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage:
        return gpu_stages.run(args.stage, args)
    started = time.monotonic()
    args.results = {}
    meta = {"command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "device": args.device, "smoke": args.smoke, "budget_s": args.budget,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "targets": [list(t) for t in TARGETS]}
    with open(args.out / "gpu_check.log", "w") as log:
        for name in args.stages:
            left = args.budget - (time.monotonic() - started)
            limit = STAGES[name][1 if args.smoke else 0]
            seconds = left if limit is None else min(limit, left)
            if seconds < MIN_STAGE_SECONDS:
                args.results[name] = {"status": f"not run: {max(left, 0):.0f} s of the budget left"}
            else:
                args.results[name] = run_stage(args, name, seconds, log)
            print(f"[gpu_check] {name}: {args.results[name]['status']}", flush=True)
            meta["elapsed_s"] = round(time.monotonic() - started, 1)
            write_outputs(args.out, args.results, meta)
    print(f"[gpu_check] written: {args.out / 'summary.md'}, {args.out / 'results.json'}, {args.out / 'gpu_check.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
