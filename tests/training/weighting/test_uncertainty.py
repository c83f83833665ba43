import math

import pytest
import torch

from codebase.training.weighting import make_weighting


def test_uncertainty_is_kendalls_form_on_the_tasks_present():
    """sum_t exp(-s_t) L_t + s_t over the tasks in the step; gradients worked by hand."""
    tasks = ("a", "b", "c")
    weighting = make_weighting("uncertainty", tasks, {})
    s = torch.tensor([0.3, -0.7, 1.1])
    with torch.no_grad():
        weighting.log_variances.copy_(s)
    base = torch.tensor([0.8, 2.5, 0.1])
    for subset in (("a", "c"), tasks):
        chosen = [i for i, name in enumerate(tasks) if name in subset]
        values = base.clone().requires_grad_(True)
        total = weighting.combine({name: values[i] for i, name in enumerate(tasks) if name in subset})
        total.backward()
        expected = sum(math.exp(-s[i]) * base[i] + s[i] for i in chosen)
        assert float(total.detach()) == pytest.approx(float(expected), rel=1e-6)
        for i in range(3):  # d/dL_t = exp(-s_t); d/ds_t = 1 - exp(-s_t) L_t; absent tasks get nothing
            present = i in chosen
            assert float(values.grad[i]) == pytest.approx(math.exp(-s[i]) if present else 0.0, rel=1e-6)
            assert float(weighting.log_variances.grad[i]) == pytest.approx(
                float(1 - math.exp(-s[i]) * base[i]) if present else 0.0, rel=1e-6, abs=1e-7)
        weighting.log_variances.grad = None
    assert weighting.task_weights() == pytest.approx({name: math.exp(-v) for name, v in zip(tasks, s.tolist())})
    assert weighting.extra_parameters() == [weighting.log_variances]
    assert set(weighting.state_dict()) == {"log_variances"}  # the key earlier checkpoints hold
