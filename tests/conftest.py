"""Shared fixtures: a small synthetic IDRiD tree, generated once per test session (per worker
under pytest-xdist)."""
import os

import pytest
import torch

from codebase.data.synthetic import generate

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on two cores: one thread per worker, and for the scripts a worker starts,
    # instead of two workers each running two threads on the same two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Size is (W, H); counts per split. Grading train quotas give every RG and MER class at least once.
SYNTHETIC_TREE = {"seed": 0, "size": (192, 128), "seg_train": 4, "seg_test": 2, "grade_train": 10, "grade_test": 5}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Data root of a synthetic IDRiD tree as SYNTHETIC_TREE describes. Treat it as read-only:
    copy it (without its .cache) before changing files; datasets may write to its .cache."""
    return generate(tmp_path_factory.mktemp("synthetic") / "data", **SYNTHETIC_TREE)
