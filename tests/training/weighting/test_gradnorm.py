import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, gram_of


def test_gradnorm_moves_weight_to_the_slower_task_by_hand():
    grads, gram = gram_of([1.0, 0.0], [0.0, 1.0])
    weighting = make_weighting("gradnorm", TASKS, {"gradnorm_alpha": 1.5, "gradnorm_lr": 0.025})
    first = weighting.coefficients([0, 1], gram, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert first.tolist() == [1.0, 1.0]
    # The first step records L(0) and does not move the weights.
    torch.testing.assert_close(weighting.weights, torch.ones(2))
    # Task a fell to 0.1, b only to 0.9: inverse rates (0.2, 1.8), a over its target, b under;
    # Adam's first step moves each weight by lr against the sign: (0.975, 1.025), sum 2.
    weighting.coefficients([0, 1], gram, torch.tensor([0.1, 0.9], dtype=torch.float64))
    torch.testing.assert_close(weighting.weights, torch.tensor([0.975, 1.025]))
    for _ in range(30):
        weighting.coefficients([0, 1], gram, torch.tensor([0.1, 0.9], dtype=torch.float64))
    assert weighting.weights[1] > 1.5 > 0.5 > weighting.weights[0]
    assert float(weighting.weights.sum()) == pytest.approx(2.0)
