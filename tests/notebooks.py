"""The project's notebooks in tests: committed without outputs, and executed headless (nbclient)."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def assert_committed_without_outputs(name):
    for cell in nbformat.read(REPO / name, as_version=4).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name


def assert_shows_figures_inline(name):
    """The first code cell selects the inline backend, so figures show in Jupyter whatever MPLBACKEND
    the server's environment sets (Agg, common in containers, would show none)."""
    first = next(cell for cell in nbformat.read(REPO / name, as_version=4).cells if cell.cell_type == "code")
    assert first.source.startswith("%matplotlib inline\n"), name


def execute(name, timeout=300):
    """Run notebook ``name`` from the repository root; -> (printed text, number of figures, all outputs).

    Fails the test if any cell raised. Settings reach the notebook through environment variables.
    """
    notebook = nbformat.read(REPO / name, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}" if errors else ""
    printed = "".join(o.get("text", "") for o in outputs)
    return printed, len([o for o in outputs if "image/png" in o.get("data", {})]), outputs
