"""Shared fixtures: a small synthetic IDRiD tree and one synthetic tree per external dataset format,
generated once per test session (per worker under pytest-xdist)."""
import os

import pytest
import torch
from synthetic_tree import EXTERNAL_TREES, SYNTHETIC_TREE

from codebase.data import synthetic_formats
from codebase.data.synthetic import generate

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on two cores: one thread per worker, and for the scripts a worker starts,
    # instead of two workers each running two threads on the same two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)



@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Data root of a synthetic IDRiD tree as SYNTHETIC_TREE describes. Treat it as read-only:
    copy it (without its .cache) before changing files; datasets may write to its .cache."""
    return generate(tmp_path_factory.mktemp("synthetic") / "data", **SYNTHETIC_TREE)


@pytest.fixture(scope="session")
def external_trees(tmp_path_factory):
    """{format: (root, what its reader must find)} of the synthetic external trees EXTERNAL_TREES
    describes (codebase.data.synthetic_formats). Read-only: copy one before changing files."""
    folder = tmp_path_factory.mktemp("external")
    return {fmt: (folder / fmt, synthetic_formats.generate(fmt, folder / fmt, seed=0, **settings))
            for fmt, settings in EXTERNAL_TREES.items()}
