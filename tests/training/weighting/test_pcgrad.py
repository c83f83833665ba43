import pytest
import torch

from codebase.training.weighting import make_weighting
from codebase.training.weighting.pcgrad import pcgrad_coefficients
from tests.training.weighting.toy import TASKS, gram_of


def test_pcgrad_projection_2d_by_hand():
    grads, gram = gram_of([1.0, 0.0], [-1.0, 1.0])
    coefficients = pcgrad_coefficients(gram, [[1], [0]])
    projected = coefficients @ grads
    # g1 - (g1.g2 / |g2|^2) g2 = (1, 0) + (-1, 1) / 2; g2 - (g2.g1 / |g1|^2) g1 = (0, 1)
    torch.testing.assert_close(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=torch.float64))
    assert projected[0] @ grads[1] >= 0 and projected[1] @ grads[0] >= 0
    weighting = make_weighting("pcgrad", TASKS, {})
    weights = weighting.coefficients([0, 1], gram, None)
    torch.testing.assert_close(weights @ grads, torch.tensor([0.5, 1.5], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.5], dtype=torch.float64))


def test_pcgrad_leaves_agreeing_gradients_alone_and_removes_conflicts():
    grads, gram = gram_of([1.0, 0.2], [0.5, 1.0])
    weighting = make_weighting("pcgrad", TASKS, {"pcgrad_seed": 3})
    torch.testing.assert_close(weighting.coefficients([0, 1], gram, None), torch.ones(2, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        grads = torch.randn(3, 5, generator=generator, dtype=torch.float64)
        projected = pcgrad_coefficients(grads @ grads.T, [[1], [0], []]) @ grads
        if grads[0] @ grads[1] < 0:
            assert projected[0] @ grads[1] == pytest.approx(0.0, abs=1e-12)
            assert projected[1] @ grads[0] == pytest.approx(0.0, abs=1e-12)
        else:
            torch.testing.assert_close(projected[:2], grads[:2])


def random_grams(count, seed):
    """Gram matrices of 2 to 7 random gradients of spread norms; every third with a strong conflict."""
    generator = torch.Generator().manual_seed(seed)
    grams = []
    for index in range(count):
        tasks = int(torch.randint(2, 8, (), generator=generator))
        grads = torch.randn(tasks, 20, generator=generator, dtype=torch.float64)
        grads = grads * torch.empty(tasks, 1, dtype=torch.float64).uniform_(0.05, 5, generator=generator)
        if index % 3 == 0:
            grads[1] = -0.7 * grads[0] + 0.1 * torch.randn(20, generator=generator, dtype=torch.float64)
        grams.append(grads @ grads.T)
    return grams


def test_pcgrad_agrees_with_torchjd_on_random_gram_matrices():
    """torchjd's PCGradWeighting draws each task's order with torch's global generator; replaying the
    same orders, the coefficients are the same (kept hand-written for its own seeded generator, which
    checkpoints with the method and leaves training's random stream alone)."""
    from torchjd.aggregation import PCGradWeighting
    for gram in random_grams(160, seed=0):
        count = gram.shape[0]
        torch.manual_seed(7)
        theirs = PCGradWeighting()(gram)
        torch.manual_seed(7)
        permutations = [torch.randperm(count).tolist() for _ in range(count)]
        orders = [[j for j in permutation if j != i] for i, permutation in enumerate(permutations)]
        ours = pcgrad_coefficients(gram, orders).sum(dim=0)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12 * float(theirs.abs().max()))
