import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, gram_of


def test_upgrad_by_hand():
    # g1 = (1, 0), g2 = (-2, 1) conflict. g1 projected onto g2 . d >= 0: (1, 0) + (2/5)(-2, 1) = (0.2, 0.4);
    # g2 projected onto g1 . d >= 0: (0, 1). Their mean (0.1, 0.7) = 1.5 g1 + 0.7 g2, times T = 2.
    grads, gram = gram_of([1.0, 0.0], [-2.0, 1.0])
    weights = make_weighting("upgrad", TASKS, {}).coefficients([0, 1], gram, None)
    torch.testing.assert_close(weights, torch.tensor([3.0, 1.4], dtype=torch.float64), rtol=0, atol=2e-3)
    exact = make_weighting("upgrad", TASKS, {"upgrad_reg_eps": 0.0}).coefficients([0, 1], gram, None)
    torch.testing.assert_close(exact, torch.tensor([3.0, 1.4], dtype=torch.float64))


def test_upgrad_conflicts_with_no_task():
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        grads = torch.randn(4, 5, generator=generator, dtype=torch.float64)
        weights = make_weighting("upgrad", tuple("abcd"), {"upgrad_reg_eps": 0.0}).coefficients(
            [0, 1, 2, 3], grads @ grads.T, None)
        assert (grads @ (weights @ grads) >= -1e-9).all()


def test_upgrad_settings_are_checked_by_name():
    with pytest.raises(ValueError, match=r"loss.upgrad_reg_eps must be >= 0, got -1.0"):
        make_weighting("upgrad", TASKS, {"upgrad_reg_eps": -1.0})
