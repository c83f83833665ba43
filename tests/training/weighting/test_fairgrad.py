import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, gram_of


@pytest.mark.parametrize("alpha,expected", [(1.0, [0.5, 1.0]), (2.0, [0.25 ** (2 / 3), 1.0])])
def test_fairgrad_by_hand(alpha, expected):
    # g1 = (2, 0), g2 = (0, 1): (G G^T w)_t = w_t^(-1/alpha) reads 4 w1 = w1^(-1/alpha), w2 = w2^(-1/alpha).
    _, gram = gram_of([2.0, 0.0], [0.0, 1.0])
    weights = make_weighting("fairgrad", TASKS, {"fairgrad_alpha": alpha}).coefficients([0, 1], gram, None)
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_fairgrad_alpha_is_checked_by_name():
    with pytest.raises(ValueError, match=r"loss.fairgrad_alpha must be > 0, got 0.0"):
        make_weighting("fairgrad", TASKS, {"fairgrad_alpha": 0.0})
