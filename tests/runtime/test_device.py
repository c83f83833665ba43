"""Device choice and mixed precision."""


import pytest
import torch

from codebase.config import (
    ConfigError,
)
from codebase.runtime.device import (
    amp_dtype,
    autocast,
    make_grad_scaler,
    resolve_device,
)


def test_resolve_device_on_this_machine():
    assert resolve_device("auto") == torch.device("cpu")  # CI has neither CUDA nor MPS
    assert resolve_device("CPU") == torch.device("cpu")
    for spec, message in [("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"),
                          ("mps", "MPS is not available"), ("tpu", "expected auto, cpu, cuda")]:
        with pytest.raises(ConfigError, match=message):
            resolve_device(spec)


def test_resolve_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="GPU 2 does not exist"):
        resolve_device("cuda:2")


def test_amp_settings(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "off") is None
    assert amp_dtype(cpu, "bf16") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype(cuda, "auto") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert amp_dtype(cuda, "auto") == torch.float16
    assert amp_dtype(cuda, "fp16") == torch.float16
    with pytest.raises(ConfigError, match="amp='half'"):
        amp_dtype(cpu, "half")
    assert not make_grad_scaler(cpu, "auto").is_enabled()
    assert make_grad_scaler(cpu, "fp16").is_enabled()
    with autocast(cpu, "off"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16


