"""The reference toy run the loop, run-folder and stopping tests compare with."""
import harness_toy
import pytest
from toy_runs import final_state, toy_config


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """Final weights and history of an uninterrupted 4-epoch toy run."""
    save_dir = tmp_path_factory.mktemp("reference")
    harness_toy.main(toy_config(save_dir))
    return final_state(save_dir / "toy")
