"""Fixtures of the script tests: one tiny trained run per model, trained once per test session."""
import pytest
from tiny_training import TRAINERS, train_tiny


@pytest.fixture(scope="session")
def tiny_runs(synthetic_root, tmp_path_factory):
    """{kind: run folder} of one tiny run per model. Treat the folders as read-only: copy one to change it."""
    save_dir = tmp_path_factory.mktemp("saved")
    return {kind: train_tiny(script, sets, synthetic_root, save_dir, f"tiny_{kind}")
            for kind, (script, sets) in TRAINERS.items()}
