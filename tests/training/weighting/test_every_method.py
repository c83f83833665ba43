"""Every registered method trains a two-task toy, resumes exactly, and runs on CUDA like on the CPU."""
import math

import numpy as np
import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import METHODS, TASKS, TwoHeads, batch, train_toy


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_a_two_task_toy_model(name):
    model = TwoHeads()
    weighting = make_weighting(name, TASKS, {})
    optimizer = torch.optim.Adam(list(model.parameters()) + weighting.extra_parameters(), lr=0.03)
    inputs, targets = batch()
    first = None
    epoch_sums = {t: 0.0 for t in TASKS}
    for step in range(1, 101):
        optimizer.zero_grad(set_to_none=True)
        losses, extra = model(inputs, targets)
        if first is None:
            first = {t: float(v.detach()) for t, v in losses.items()}
        weighting.backward(losses, extra, list(model.shared.parameters()))
        optimizer.step()
        with torch.no_grad():
            weighting.after_step(model(inputs, targets)[0])
        for t in TASKS:
            epoch_sums[t] += float(losses[t].detach())
        if step % 10 == 0:
            weighting.end_epoch(step // 10, {t: epoch_sums[t] / 10 for t in TASKS})
            epoch_sums = {t: 0.0 for t in TASKS}
    with torch.no_grad():
        last = {t: float(v) for t, v in model(inputs, targets)[0].items()}
    for t in TASKS:
        assert last[t] < 0.5 * first[t], (t, first[t], last[t])
    assert all(math.isfinite(w) for w in weighting.task_weights().values())


STATELESS = {"fixed", "cagrad", "mgda", "imtl_g", "upgrad", "dualproj", "aligned_mtl", "fairgrad"}


@pytest.mark.parametrize("name", METHODS)
def test_a_resumed_weighting_continues_exactly(name):
    model, weighting = TwoHeads(), make_weighting(name, TASKS, {})
    train_toy(model, weighting, 4)
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    weighting_state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in weighting.state_dict().items()}
    continued = train_toy(model, weighting, 4, start=4)
    assert all(v.dtype != torch.float64 for v in weighting_state.values() if isinstance(v, torch.Tensor))  # MPS
    resumed_model, resumed = TwoHeads(), make_weighting(name, TASKS, {})
    resumed_model.load_state_dict(model_state)
    resumed.load_state_dict(weighting_state)
    assert train_toy(resumed_model, resumed, 4, start=4) == continued
    if name in STATELESS:  # their weights are a function of the step's gradients alone
        assert not weighting_state
    else:  # a stateful method's weights must change, or the test above proves nothing
        assert continued[0] != continued[-1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_on_cuda_like_on_cpu(name):
    model, weighting = TwoHeads(), make_weighting(name, TASKS, {})
    on_cpu = train_toy(model, weighting, 5)
    model, weighting = TwoHeads().cuda(), make_weighting(name, TASKS, {}).cuda()
    on_cuda = train_toy(model, weighting, 5, device="cuda")
    np.testing.assert_allclose(np.array(on_cuda), np.array(on_cpu), rtol=1e-3, atol=1e-4)
