"""The dataset notebook runs headless on synthetic data and is committed without outputs."""
import notebooks
import pytest

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses


def test_visualize_notebook_is_committed_without_outputs():
    notebooks.assert_committed_without_outputs("visualize_segmentation_dataset.ipynb")


@pytest.mark.parametrize("name", sorted(path.name for path in notebooks.REPO.glob("*.ipynb")))
def test_every_notebook_shows_its_figures_inline(name):
    notebooks.assert_shows_figures_inline(name)


@pytest.mark.notebook
@pytest.mark.parametrize("backend", [None, "Agg"])  # Agg: what a headless server's environment often sets
def test_visualize_notebook_executes(synthetic_root, monkeypatch, backend):
    monkeypatch.setenv("IDRID_ROOT", str(synthetic_root))
    if backend:
        monkeypatch.setenv("MPLBACKEND", backend)
    printed, figures, _ = notebooks.execute("visualize_segmentation_dataset.ipynb")
    assert str(synthetic_root.resolve()) in printed
    assert figures == 3
