"""The devices a test body runs on: the CPU always, and CUDA, marked ``cuda`` and skipped without a GPU.

    @pytest.mark.parametrize("device", CPU_AND_CUDA)   # test[cpu] runs everywhere, test[cuda] on a GPU

``pytest -m cuda`` (what benchmarks/gpu_check.py runs) selects the CUDA cases only. The CPU case runs
the same body in CI, so a CUDA test's logic has been exercised before it first meets a GPU.
"""
import pytest
import torch

NO_GPU = "needs a CUDA GPU (torch.cuda.is_available() is false)"
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)],
                    id="cuda")
CPU_AND_CUDA = ["cpu", CUDA]


def on(*devices, id=None):
    """A parametrisation case over several devices (e.g. written on one, resumed on another), marked ``cuda``
    and skipped without a GPU when one of them is CUDA."""
    if any(device.startswith("cuda") for device in devices):
        return pytest.param(*devices, marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                   reason=NO_GPU)], id=id)
    return pytest.param(*devices, id=id)
