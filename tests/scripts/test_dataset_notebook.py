"""The dataset notebook runs headless on synthetic data and is committed without outputs."""
import notebooks
import pytest

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses


def test_visualize_notebook_is_committed_without_outputs():
    notebooks.assert_committed_without_outputs("visualize_segmentation_dataset.ipynb")


@pytest.mark.notebook
def test_visualize_notebook_executes(synthetic_root, monkeypatch):
    monkeypatch.setenv("IDRID_ROOT", str(synthetic_root))
    printed, figures, _ = notebooks.execute("visualize_segmentation_dataset.ipynb")
    assert str(synthetic_root.resolve()) in printed
    assert figures == 3
