"""The benchmark scripts keep working (tiny sizes; timings are not asserted)."""
import pytest

from benchmarks import (
    bench_data,
    bench_gpu,
    bench_routing,
    bench_segmentation_cost,
    bench_torchjd_agreement,
    bench_weighting,
)

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses


def test_data_benchmark_smoke_run(capsys):
    assert bench_data.main(["--smoke"]) == 0
    printed = capsys.readouterr().out
    for row in ("reference: full-size decode", "cold cache", "warm cache: load + train preset", "ratio", "samples/s"):
        assert row in printed


def test_segmentation_cost_benchmark_smoke_run(capsys):
    assert bench_segmentation_cost.main(["--smoke"]) == 0
    printed = capsys.readouterr().out
    assert "params (M)" in printed and "OS 8" in printed and "OS 16" in printed


def test_routing_benchmark_smoke_run(capsys):
    bench_routing.main(["--smoke"])
    printed = capsys.readouterr().out
    for title in ("Forward GFLOPs per image", "Dense vs top-p", "Top-p selection", "experts one after another"):
        assert title in printed
    assert "predicted" in printed and "speed-up" in printed


def test_gpu_benchmark_smoke_run_on_cpu(capsys):
    bench_gpu.main(["--smoke", "--device", "cpu"])
    printed = capsys.readouterr().out
    for row in ("plain fp32, dense", "tuned, top-p", "single expert", "Inference at batch 1", "DeepLabV3+"):
        assert row in printed


def test_weighting_benchmark_smoke_run(capsys):
    assert bench_weighting.main(["--smoke", "--methods", "pcgrad,upgrad"]) == 0
    printed = capsys.readouterr().out
    assert "load average" in printed and "peak RSS MiB" in printed
    rows = [line.split() for line in printed.splitlines()
            if line.split()[:1] in (["fixed"], ["pcgrad"], ["upgrad"])]
    assert [row[0] for row in rows] == ["fixed", "pcgrad", "upgrad", "fixed"]  # the reference first and last
    assert "(torchjd)" in rows[2] and "(torchjd)" not in rows[1]
    assert rows[0][-3:] == ["1.00x", rows[0][-2], "+0"]  # fixed against itself: time ratio, memory difference
    assert all(row[-3].endswith("x") and row[-5].endswith("x") and float(row[-2]) > 0 for row in rows)


def test_torchjd_agreement_benchmark_smoke_run(capsys):
    assert bench_torchjd_agreement.main(["--smoke"]) == 0
    printed = capsys.readouterr().out
    row = next(line.split() for line in printed.splitlines() if line.startswith("PCGrad"))
    assert float(row[2]) < 1e-12  # the same coefficients under the same task orders
