import math

import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, gram_of


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_gradvac_first_step_is_pcgrad_then_it_aims_at_its_targets_by_hand():
    # Targets start at 0: the first step projects the conflicting gradients as PCGrad does (test_pcgrad's case).
    grads, gram = gram_of([1.0, 0.0], [-1.0, 1.0])
    weighting = make_weighting("gradvac", TASKS, {})
    torch.testing.assert_close(weighting.coefficients([0, 1], gram, None), torch.tensor([2.0, 1.5], dtype=torch.float64))
    seen = -1 / math.sqrt(2)  # cos(g1, g2) before the correction; beta = 0.5 of it goes into both targets
    torch.testing.assert_close(weighting.cosine_targets, torch.tensor([[0.0, 0.5 * seen], [0.5 * seen, 0.0]]))
    # Second step, same gradients: g1' = g1 + c g2 and g2' = g2 + c' g1 are moved only until their
    # cosine with the other reaches the target; the weights are (1 + c', 1 + c).
    weights = weighting.coefficients([0, 1], gram, None)
    target = 0.5 * seen
    moved_first, moved_second = grads[0] + (weights[1] - 1) * grads[1], grads[1] + (weights[0] - 1) * grads[0]
    assert cosine(moved_first, grads[1]) == pytest.approx(target, abs=1e-6)
    assert cosine(moved_second, grads[0]) == pytest.approx(target, abs=1e-6)
    assert float(weights[1]) < 1.5  # a smaller move than the first step's full projection
    assert float(weighting.cosine_targets[0, 1]) == pytest.approx(0.5 * target + 0.5 * seen, abs=1e-6)


def conflicting_gram(count=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(count, 6, generator=generator, dtype=torch.float64)
    return grads @ grads.T


def test_gradvac_draws_its_orders_from_its_own_seeded_generator():
    gram, tasks = conflicting_gram(), tuple("abcd")
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    first = make_weighting("gradvac", tasks, {"gradvac_seed": 5})
    runs = [first.coefficients([0, 1, 2, 3], gram, None) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), global_state)  # training's own random stream is untouched
    again = make_weighting("gradvac", tasks, {"gradvac_seed": 5})
    assert all(torch.equal(a, again.coefficients([0, 1, 2, 3], gram, None)) for a in runs)


def test_gradvac_resumes_with_its_targets_and_generator():
    gram, tasks = conflicting_gram(), tuple("abcd")
    weighting = make_weighting("gradvac", tasks, {"gradvac_seed": 2})
    for _ in range(3):
        weighting.coefficients([0, 1, 2, 3], gram, None)
    saved = {key: (value.clone() if isinstance(value, torch.Tensor) else value)
             for key, value in weighting.state_dict().items()}
    assert saved["cosine_targets"].dtype == torch.float32 and saved["cosine_targets"].abs().sum() > 0
    continued = [weighting.coefficients([0, 1, 2, 3], gram, None) for _ in range(3)]
    resumed = make_weighting("gradvac", tasks, {"gradvac_seed": 2})
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, resumed.coefficients([0, 1, 2, 3], gram, None)) for a in continued)
    fresh = make_weighting("gradvac", tasks, {"gradvac_seed": 2})
    assert not torch.equal(fresh.coefficients([0, 1, 2, 3], gram, None), continued[0])  # the state mattered


def test_gradvac_updates_only_the_targets_of_the_tasks_present():
    weighting = make_weighting("gradvac", tuple("abc"), {})
    _, gram = gram_of([1.0, 0.0], [-1.0, 1.0])
    weighting.coefficients([0, 2], gram, None)
    targets = weighting.cosine_targets
    assert float(targets[0, 2]) == pytest.approx(-0.5 / math.sqrt(2)) and float(targets[2, 0]) == float(targets[0, 2])
    assert targets[1].abs().sum() == 0 and targets[:, 1].abs().sum() == 0
    assert weighting.method._phi_t is None  # torchjd's module keeps nothing between steps
