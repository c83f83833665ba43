"""The dataset notebook runs headless on synthetic data; the data benchmark's smoke run prints its table."""
import importlib.util
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def test_visualize_notebook_is_committed_without_outputs():
    notebook = nbformat.read(REPO / "visualize_segmentation_dataset.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_visualize_notebook_executes(synthetic_root, monkeypatch):
    monkeypatch.setenv("IDRID_ROOT", str(synthetic_root))
    notebook = nbformat.read(REPO / "visualize_segmentation_dataset.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert str(synthetic_root.resolve()) in printed
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3


def test_data_benchmark_smoke_run(capsys):
    spec = importlib.util.spec_from_file_location("bench_data", REPO / "benchmarks" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for row in ("reference: full-size decode", "cold cache", "warm cache: load + train preset", "ratio", "samples/s"):
        assert row in out
