"""The multi-task model's loss weightings under torchrun (2 gloo processes): the ranks stay identical.

Every method written in this package runs; of torchjd's methods, which all go through one adapter
(codebase/training/weighting/torchjd_adapter.py), a stateless one (MGDA) and the stateful one
(GradVac), so that the two-process run stays within a few minutes on 2 cores.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codebase.training.weighting import WEIGHTINGS, installed_weightings
from codebase.training.weighting.torchjd_adapter import TorchJDWeighting
from tests.training.test_weighting_multitask import TASK_SPECS, TORCHJD_REPRESENTATIVES

pytestmark = pytest.mark.slow  # runs two processes

REPO = Path(__file__).resolve().parents[2]


def ddp_methods():
    return sorted(method for method in installed_weightings()
                  if not issubclass(WEIGHTINGS[method], TorchJDWeighting) or method in TORCHJD_REPRESENTATIVES)


def test_weightings_under_two_process_ddp_keep_the_ranks_identical(synthetic_root, tmp_path):
    """torchrun, 2 gloo processes, each its own half of the data: after two steps of each method the
    two ranks hold the same model weights and logged the same task weights (checked in the script;
    the gradient methods reduce their per-task gradients, the loss methods see reduced losses), and
    the weights moved."""
    methods = ddp_methods()
    out = tmp_path / "ddp.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "tests.training.ddp_multitask_weighting", ",".join(methods), str(synthetic_root), str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = torch.load(out, weights_only=True)
    assert sorted(results) == methods
    for method, result in results.items():
        assert result["max_difference_between_ranks"] == 0.0 and result["task_weight_difference"] == 0.0, method
        assert result["moved"] > 0.0, method
        assert set(result["task_weights"]) == set(TASK_SPECS), method
        assert all(torch.isfinite(torch.tensor(list(result["task_weights"].values())))), method
