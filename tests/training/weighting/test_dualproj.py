import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, gram_of


def test_dualproj_by_hand():
    # g1 = (1, 0), g2 = (-2, 1): the mean (-0.5, 0.5) conflicts with g1; its projection onto g1 . d >= 0
    # is (0, 0.5), which g2 accepts: (0, 0.5) = g1 + 0.5 g2, times T = 2.
    grads, gram = gram_of([1.0, 0.0], [-2.0, 1.0])
    exact = make_weighting("dualproj", TASKS, {"dualproj_reg_eps": 0.0}).coefficients([0, 1], gram, None)
    torch.testing.assert_close(exact, torch.tensor([2.0, 1.0], dtype=torch.float64))
    default = make_weighting("dualproj", TASKS, {}).coefficients([0, 1], gram, None)
    torch.testing.assert_close(default, torch.tensor([2.0, 1.0], dtype=torch.float64), rtol=0, atol=2e-3)


def test_dualproj_is_the_nearest_direction_that_conflicts_with_none():
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        grads = torch.randn(3, 4, generator=generator, dtype=torch.float64)
        weights = make_weighting("dualproj", ("a", "b", "c"), {"dualproj_reg_eps": 0.0}).coefficients(
            [0, 1, 2], grads @ grads.T, None)
        direction, mean = weights @ grads / 3, grads.mean(0)
        assert (grads @ direction >= -1e-9).all()
        # KKT of the projection: the move is a non-positive combination of the gradients it touches
        for scale in (0.5, 0.9):
            other = mean + scale * (direction - mean)  # nearer the mean, so it must conflict with some task
            assert (grads @ other < 1e-9).any() or torch.allclose(direction, mean)
