import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, gram_of


@pytest.mark.parametrize("g1,g2", [([1.0, 0.0], [-2.0, 1.0]), ([3.0, 1.0], [0.0, -0.5]), ([1.0, 2.0], [2.0, -1.0])])
def test_mgda_is_the_min_norm_point_of_two_gradients(g1, g2):
    """The closest point to 0 on the segment [g1, g2]: g2 + a (g1 - g2), a = (g2 - g1) . g2 / |g1 - g2|^2."""
    grads, gram = gram_of(g1, g2)
    weights = make_weighting("mgda", TASKS, {}).coefficients([0, 1], gram, None)
    share = float((grads[1] - grads[0]) @ grads[1] / (grads[0] - grads[1]).pow(2).sum())
    torch.testing.assert_close(weights, 2 * torch.tensor([share, 1 - share], dtype=torch.float64))
    direction = weights @ grads / 2  # the min-norm point: it improves both tasks by at least |d|^2
    assert (grads @ direction >= direction @ direction - 1e-9).all()


def test_mgda_picks_the_smaller_gradient_when_it_is_the_min_norm_point():
    grads, gram = gram_of([1.0, 0.0], [2.0, 1.0])  # g1 . g2 = 2 >= |g1|^2: the segment's nearest point is g1
    weights = make_weighting("mgda", TASKS, {}).coefficients([0, 1], gram, None)
    torch.testing.assert_close(weights, torch.tensor([2.0, 0.0], dtype=torch.float64))


def test_mgda_on_opposite_gradients_stops_the_shared_update():
    grads, gram = gram_of([1.0, -1.0], [-2.0, 2.0])  # 0 is in the hull: Pareto-stationary
    weights = make_weighting("mgda", TASKS, {}).coefficients([0, 1], gram, None)
    assert float((weights @ grads).norm()) < 1e-9 and float(weights.sum()) == pytest.approx(2.0)


def test_mgda_settings_are_checked_by_name():
    with pytest.raises(ValueError, match=r"loss.mgda_epsilon must be > 0, got 0.0"):
        make_weighting("mgda", TASKS, {"mgda_epsilon": 0.0})
    assert make_weighting("mgda", TASKS, {"mgda_max_iters": 5}).method.max_iters == 5
