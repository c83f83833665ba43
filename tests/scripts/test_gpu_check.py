"""benchmarks/gpu_check.py: every stage works at a tiny size on the CPU, a stage past its time limit
keeps what it measured, and the summary says which targets are met, missed or unmeasured."""
import argparse
import json
import subprocess
import sys

import pytest
from tiny_training import ENV, REPO

from benchmarks import gpu_check
from benchmarks.gpu_report import TARGETS, summary_markdown

META = {"command": "python benchmarks/gpu_check.py --out x", "device": "cuda", "smoke": False, "budget_s": 480,
        "started": "now", "elapsed_s": 400}


def test_summary_says_which_targets_are_met_missed_or_unmeasured():
    results = {"environment": {"status": "done", "values": {"card": "NVIDIA H200", "matmul_peak_flops": 8.1e14}},
               "bench_gpu": {"status": "timed out after 150 s (rows measured before are kept)",
                             "values": {"train_tuned_dense_images_per_s": 95.0, "train_tuned_top_p_images_per_s": 120.0},
                             "tables": [{"title": "Multi-task training", "header": ["configuration", "images/s"],
                                         "rows": [["tuned, dense", "95.0"], ["tuned | top-p", "120.0"]]}]}}
    text = summary_markdown(META, results)
    assert text.startswith("# GPU check: NVIDIA H200")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows[TARGETS[0][0]].endswith("| met |") and "95.00" in rows[TARGETS[0][0]]
    assert rows[TARGETS[1][0]].endswith("| missed |")
    assert "unmeasured (timed out after 150 s" in rows[TARGETS[2][0]]
    assert "unmeasured (stage not run)" in rows[TARGETS[4][0]]
    assert "| tuned / top-p | 120.0 |" in text  # a cell's "|" cannot break the table
    assert "| bf16 matmul peak (TFLOP/s) | 810 |" in text
    smoke = summary_markdown({**META, "smoke": True, "device": "cpu"}, results)
    assert smoke.count("unmeasured (not a CUDA run)") == len(TARGETS)


STUCK_STAGE = """import json, sys, time
table = {"title": "measured", "header": ["what"], "rows": [["first row"]]}
open(sys.argv[1], "w").write(json.dumps({"tables": [table], "values": {}, "notes": []}))
time.sleep(600)"""


def test_a_stage_past_its_time_limit_is_killed_and_keeps_its_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "stage_command", lambda args, name, partial, peak, seconds:
                        [sys.executable, "-c", STUCK_STAGE, str(partial)])
    args = argparse.Namespace(out=tmp_path, device="cpu", smoke=True, results={})
    with open(tmp_path / "log.txt", "w") as log:
        record = gpu_check.run_stage(args, "environment", 3, log)
    assert record["status"] == "timed out after 3 s (rows measured before are kept)"
    assert record["tables"][0]["rows"] == [["first row"]]


def test_stages_without_time_left_are_reported_as_not_run(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--budget", "5"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["stages"]
    assert list(results) == list(gpu_check.STAGES)
    assert all(record["status"].startswith("not run: 5 s of the budget left") for record in results.values())
    assert "unmeasured" in (tmp_path / "summary.md").read_text()
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path), "--stages", "environment,benchmarks"])
    assert "unknown stage benchmarks" in capsys.readouterr().err


@pytest.mark.slow
def test_the_smoke_run_on_the_cpu_runs_every_stage_and_writes_the_summary(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == ["cuda_tests.xml", "gpu_check.log", "results.json",
                                                           "summary.md"]
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert {name: record["status"] for name, record in stages.items()} == {name: "done" for name in gpu_check.STAGES}
    for name, record in stages.items():
        assert record["tables"] and all(table["rows"] for table in record["tables"]), name
    assert stages["environment"]["values"]["matmul_peak_flops"] > 0
    assert {"train_tuned_top_p_images_per_s", "inference_top_p_ms", "deeplab_tuned_images_per_s"} <= set(
        stages["bench_gpu"]["values"])
    tests = stages["cuda_tests"]["tables"][0]["rows"]
    assert any("test_top_p_step_synchronises_only_to_plan_its_dispatch[cuda]" in row[0] for row in tests)
    import torch
    if not torch.cuda.is_available():
        assert all(row[1] == "skipped (setup)" and "needs a CUDA GPU" in row[3] for row in tests)
    assert stages["synthetic_run"]["values"]["exit_code"] == 0
    assert [row[1] for row in stages["synthetic_run"]["tables"][0]["rows"]] == ["dense", "top-p"]
    summary = (out / "summary.md").read_text()
    assert summary.count("unmeasured (not a CUDA run)") == 5 and "## moe_grid: done" in summary
    assert not (REPO / "saved" / "gpu_check_scratch").exists()  # the stages' files stay out of the repository
