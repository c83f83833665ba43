
import numpy as np
import pytest
import torch

from codebase.training.weighting import make_weighting
from codebase.training.weighting.cagrad import cagrad_coefficients
from tests.training.weighting.toy import TASKS, gram_of


def brute_force_cagrad(grads, c, points=200_000):
    """max over d on the circle |d - g0| = c |g0| of min_t g_t . d (2-D gradients)."""
    g0 = grads.mean(0)
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    circle = g0.numpy() + c * float(g0.norm()) * np.stack([np.cos(angles), np.sin(angles)], 1)
    worst = (circle @ grads.numpy().T).min(1)
    return circle[worst.argmax()]


def test_cagrad_with_c_zero_is_the_equal_weight_gradient():
    grads, gram = gram_of([1.0, 0.0, 2.0], [-3.0, 1.0, 0.5], [0.2, 0.2, -4.0])
    weighting = make_weighting("cagrad", ("a", "b", "c"), {"cagrad_c": 0.0})
    weights = weighting.coefficients([0, 1, 2], gram, None)
    assert weights.tolist() == pytest.approx([1.0] * 3)  # T x the mean gradient = the plain sum
    assert cagrad_coefficients(gram.numpy(), 0.0).tolist() == [1 / 3] * 3  # the paper's mean scale


@pytest.mark.parametrize("grads", [([1.0, 0.0], [0.0, 0.2]), ([1.0, 0.0], [-0.8, 0.6]),
                                   ([2.0, 1.0], [-1.0, 0.3], [0.1, -0.5])])
def test_cagrad_matches_the_primal_optimum_and_favours_the_worse_task(grads):
    grads, gram = gram_of(*grads)
    c = 0.5
    tasks = tuple("abc"[:len(grads)])
    weighting = make_weighting("cagrad", tasks, {"cagrad_c": c, "cagrad_rescale": False})
    direction = weighting.coefficients(list(range(len(grads))), gram, None) @ grads / len(grads)  # mean scale
    expected = brute_force_cagrad(grads, c)
    np.testing.assert_allclose(direction.numpy(), expected, atol=2e-3 * float(grads.norm()))
    g0 = grads.mean(0)
    assert (grads @ direction).min() > (grads @ g0).min() + 1e-3  # the worst task improves more
    rescaled = make_weighting("cagrad", tasks, {"cagrad_c": c}).coefficients(list(range(len(grads))), gram, None)
    torch.testing.assert_close(rescaled @ grads / len(grads), direction / (1 + c ** 2))


def test_cagrad_moves_toward_the_task_with_the_smaller_gradient_by_hand():
    # g1 = (1, 0), g2 = (0, 1/5): g0 = (1/2, 1/10) mostly serves task 1; CAGrad tilts toward g2.
    grads, gram = gram_of([1.0, 0.0], [0.0, 0.2])
    weighting = make_weighting("cagrad", TASKS, {"cagrad_c": 0.4, "cagrad_rescale": False})
    weights = weighting.coefficients([0, 1], gram, None) / 2  # back to the paper's mean scale
    direction = weights @ grads
    g0 = grads.mean(0)
    assert weights[1] > weights[0] / 5 and weights[1] > 0.5
    assert direction[1] / direction.norm() > g0[1] / g0.norm()
    assert float((direction - g0).norm()) == pytest.approx(0.4 * float(g0.norm()), rel=1e-6)


def test_cagrad_reaches_the_dual_bound_on_random_and_conflicting_gradients():
    """Weak duality: every simplex w bounds the worst improvement by w . b + c |g0| |g_w|; a direction
    that reaches the smallest bound (found here by multi-start SLSQP on the dual) is optimal."""
    from scipy.optimize import minimize
    rng = np.random.default_rng(1)
    for trial in range(30):
        count, size = int(rng.integers(2, 8)), int(rng.integers(2, 40))
        grads = rng.normal(size=(count, size)) * rng.uniform(0.01, 10, size=(count, 1))
        if trial % 3 == 0:  # nearly opposite gradients: a combination almost cancels
            grads[1] = -0.5 * grads[0] + 0.01 * rng.normal(size=size)
        gram, c = grads @ grads.T, float(rng.uniform(0.05, 1.5))
        direction = cagrad_coefficients(gram, c) @ grads
        mean = grads.mean(0)
        assert np.linalg.norm(direction - mean) <= c * np.linalg.norm(mean) * (1 + 1e-6)
        achieved = (grads @ direction).min()

        def bound(w):
            return w @ grads @ mean + c * np.linalg.norm(mean) * np.linalg.norm(w @ grads)

        starts = [np.full(count, 1 / count)] + [rng.dirichlet(np.ones(count)) for _ in range(4)]
        smallest = min(minimize(bound, start, method="SLSQP", bounds=[(0, 1)] * count, options={"ftol": 1e-14},
                                constraints={"type": "eq", "fun": lambda w: w.sum() - 1}).fun for start in starts)
        assert achieved <= smallest + 1e-9 * gram.max()
        assert achieved == pytest.approx(smallest, abs=1e-6 * gram.max())


@pytest.mark.skipif(not all(__import__("importlib").util.find_spec(p) for p in ("cvxpy", "clarabel")),
                    reason="torchjd's CAGrad needs the optional cvxpy and clarabel (torchjd[cagrad])")
@pytest.mark.parametrize("c", [0.2, 0.4, 0.8])
def test_cagrad_agrees_with_torchjd_on_random_gram_matrices(c):
    """torchjd's CAGradWeighting (cvxpy, CLARABEL, on the dual) and this SLSQP solution give the same
    direction (kept hand-written: no cvxpy, and about 5x faster per step)."""
    from torchjd.aggregation import CAGradWeighting

    from tests.training.weighting.test_pcgrad import random_grams
    theirs_of = CAGradWeighting(c=c)
    for gram in random_grams(100, seed=1):
        ours = torch.from_numpy(cagrad_coefficients(gram.numpy(), c))
        theirs = theirs_of(gram)
        norm_ours, norm_theirs = float(ours @ gram @ ours) ** 0.5, float(theirs @ gram @ theirs) ** 0.5
        assert float(ours @ gram @ theirs) / (norm_ours * norm_theirs) > 1 - 1e-6
        # the worst task's improvement per unit length, relative to the mean gradient's length
        mean_length = float(gram.mean()) ** 0.5
        worst_ours, worst_theirs = float((gram @ ours).min()) / norm_ours, float((gram @ theirs).min()) / norm_theirs
        assert abs(worst_ours - worst_theirs) <= 1e-3 * mean_length
