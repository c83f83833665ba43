"""A task's experts: sparse dispatch, the grouped dense form, mixing on a subset."""
import copy

import pytest
import torch
from tiny_models import SPECS, count_calls, count_expert_calls, small_model

from codebase.networks.experts import ExpertBank


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("training", [False, True])
def test_grouped_dense_experts_equal_the_sequential_form(training, memory_format):
    model = small_model().train(training).to(memory_format=memory_format)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    sequential_model = copy.deepcopy(model)
    for bank, other in zip(model.experts.values(), sequential_model.experts.values()):
        assert bank.groupable
        bank.grouped, other.grouped = True, False
    calls = count_expert_calls(model)
    images = torch.randn(2, 3, 64, 96).contiguous(memory_format=memory_format)
    grouped = model(images, dense=True)["logits"]
    assert sum(calls.values()) == 0  # the grouped form never calls an expert module
    sequential = sequential_model(images, dense=True)["logits"]
    for task in SPECS:
        assert torch.allclose(grouped[task], sequential[task], atol=1e-5), task
    # BatchNorm running statistics land in each expert's own buffers, as in the sequential form.
    for (name, buffer), other in zip(model.named_buffers(), sequential_model.buffers()):
        assert torch.allclose(buffer.float(), other.float(), atol=1e-6), name


def test_dense_form_is_grouped_on_cuda_and_sequential_on_cpu_by_default():
    """"auto" runs the grouped computation where it is the fast form (CUDA) and expert after expert on the CPU,
    where oneDNN's grouped kernels are slower (benchmarks/bench_routing.py)."""
    model = small_model()
    for bank in model.experts.values():
        assert bank.grouped == "auto"
        assert bank.runs_grouped(torch.device("cuda")) and not bank.runs_grouped(torch.device("cpu"))
        bank.grouped = True
        assert bank.runs_grouped(torch.device("cpu"))
    model = small_model()
    calls = count_expert_calls(model)
    model(torch.randn(2, 3, 64, 96), dense=True)
    assert set(calls.values()) == {1}  # on the CPU every expert module runs once, on the whole batch
    with pytest.raises(ValueError, match="grouped"):
        ExpertBank([], grouped="yes")


def test_mix_with_an_expert_on_the_whole_batch_and_one_on_a_subset():
    """An expert every image selected runs on the batch as it is; one selected by some images runs on exactly
    those; one selected by none never runs. The sum is each image's own weighted mixture."""
    torch.manual_seed(0)
    experts = [torch.nn.Conv2d(4, 2, 1) for _ in range(3)]
    bank = ExpertBank(experts)
    calls = [count_calls(expert) for expert in experts]
    x = torch.randn(3, 4, 5, 6)
    mixture = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [1.0, 0.0, 0.0]])
    plan = [torch.arange(3), torch.tensor([1]), None]
    out = bank.mix((x,), mixture, plan)
    assert calls == [[3], [1], []]
    expected = torch.stack([experts[0](x[i:i + 1])[0] * mixture[i, 0] + experts[1](x[i:i + 1])[0] * mixture[i, 1]
                            for i in range(3)])
    assert torch.allclose(out, expected, atol=1e-6)
