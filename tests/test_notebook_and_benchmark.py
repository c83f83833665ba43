"""The dataset notebook runs headless on synthetic data; the data benchmark's smoke run prints its table."""
import importlib.util
from pathlib import Path

import notebooks

REPO = Path(__file__).resolve().parents[1]


def test_visualize_notebook_is_committed_without_outputs():
    notebooks.assert_committed_without_outputs("visualize_segmentation_dataset.ipynb")


def test_visualize_notebook_executes(synthetic_root, monkeypatch):
    monkeypatch.setenv("IDRID_ROOT", str(synthetic_root))
    printed, figures, _ = notebooks.execute("visualize_segmentation_dataset.ipynb")
    assert str(synthetic_root.resolve()) in printed
    assert figures == 3


def test_data_benchmark_smoke_run(capsys):
    spec = importlib.util.spec_from_file_location("bench_data", REPO / "benchmarks" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for row in ("reference: full-size decode", "cold cache", "warm cache: load + train preset", "ratio", "samples/s"):
        assert row in out
