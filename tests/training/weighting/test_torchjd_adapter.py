"""The adapter: torchjd's weights on the project's scale, and the methods that reduce to the
equal-weight sum on gradients that agree."""
import pytest
import torch

from codebase.training.weighting import WEIGHTINGS, make_weighting
from codebase.training.weighting.torchjd_adapter import TorchJDWeighting
from tests.training.weighting.toy import gram_of

TORCHJD = {"mgda", "imtl_g", "upgrad", "dualproj", "aligned_mtl", "gradvac", "fairgrad", "nash_mtl"}


def test_the_torchjd_methods_are_registered_through_the_adapter():
    assert {name for name, cls in WEIGHTINGS.items() if issubclass(cls, TorchJDWeighting)} == TORCHJD


@pytest.mark.parametrize("name", ["mgda", "imtl_g", "upgrad", "dualproj", "aligned_mtl"])
def test_published_mean_scale_weights_are_times_the_number_of_tasks(name):
    """Three orthogonal gradients of equal norm: every one of these methods is the mean, so T x 1/T = 1."""
    _, gram = gram_of([2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0])
    weighting = make_weighting(name, ("a", "b", "c"), {})
    torch.testing.assert_close(weighting.coefficients([0, 1, 2], gram, None), torch.ones(3, dtype=torch.float64),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "gradvac", "pcgrad"])
def test_methods_that_only_act_on_conflict_give_the_equal_weight_sum_without_one(name):
    """Gradients of different norms and directions, no pair in conflict (every dot product > 0)."""
    grads, gram = gram_of([3.0, 0.5, 0.0], [0.2, 1.0, 0.1], [1.0, 1.0, 4.0])
    assert (gram > 0).all()
    weighting = make_weighting(name, ("a", "b", "c"), {})
    torch.testing.assert_close(weighting.coefficients([0, 1, 2], gram, None), torch.ones(3, dtype=torch.float64),
                               rtol=1e-3, atol=1e-3)
