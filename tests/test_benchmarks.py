"""The routing and GPU benchmark scripts keep working (tiny sizes; timings are not asserted)."""
from benchmarks import bench_gpu, bench_routing


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
