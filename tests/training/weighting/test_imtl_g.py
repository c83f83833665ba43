import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, gram_of


def test_imtl_g_by_hand():
    # g1 = (2, 0), g2 = (0, 1): d = w1 g1 + w2 g2 projects 2 w1 on u1 and w2 on u2, equal when w = (1/3, 2/3).
    grads, gram = gram_of([2.0, 0.0], [0.0, 1.0])
    weights = make_weighting("imtl_g", TASKS, {}).coefficients([0, 1], gram, None)
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 4 / 3], dtype=torch.float64))


def test_imtl_g_projects_equally_on_every_task_gradient():
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        grads = torch.randn(3, 6, generator=generator, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [5.0]])
        weights = make_weighting("imtl_g", ("a", "b", "c"), {}).coefficients([0, 1, 2], grads @ grads.T, None)
        projections = grads @ (weights @ grads) / grads.norm(dim=1)  # d . g_t / |g_t|
        torch.testing.assert_close(projections, projections.mean().expand(3), rtol=1e-9, atol=1e-9)
        assert float(weights.sum()) == pytest.approx(3.0)  # the paper's weights sum to 1, times T
