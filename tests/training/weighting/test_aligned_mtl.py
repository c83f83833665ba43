import math

import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, gram_of


def test_aligned_mtl_by_hand():
    # g1 = (2, 0), g2 = (0, 1): orthogonal already; aligning rescales both to the smallest singular
    # value's norm (1): (1, 0) and (0, 1), averaged and times T: 0.5 g1 + 1 g2.
    grads, gram = gram_of([2.0, 0.0], [0.0, 1.0])
    weights = make_weighting("aligned_mtl", TASKS, {}).coefficients([0, 1], gram, None)
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.0], dtype=torch.float64))
    rmse = make_weighting("aligned_mtl", TASKS, {"aligned_mtl_scale_mode": "rmse"}).coefficients([0, 1], gram, None)
    torch.testing.assert_close(rmse, math.sqrt(2.5) * torch.tensor([0.5, 1.0], dtype=torch.float64))  # mean eigenvalue


def test_aligned_mtl_gives_orthogonal_components_of_equal_norm():
    grads, gram = gram_of([1.0, 0.0, 0.0], [-0.8, 0.6, 0.0], [0.3, 0.3, 2.0])
    weights = make_weighting("aligned_mtl", ("a", "b", "c"), {}).coefficients([0, 1, 2], gram, None)
    eigenvalues = torch.linalg.eigvalsh(gram)
    # the combined gradient is sqrt(lambda_min) G^T (G G^T)^(-1/2) 1: its squared norm is lambda_min T
    assert float((weights @ grads).pow(2).sum()) == pytest.approx(float(eigenvalues.min()) * 3, rel=1e-9)


def test_aligned_mtl_scale_mode_is_checked_by_name():
    with pytest.raises(ValueError, match=r"loss.aligned_mtl_scale_mode must be one of 'min', 'median', 'rmse'"):
        make_weighting("aligned_mtl", TASKS, {"aligned_mtl_scale_mode": "max"})
    with pytest.raises(ValueError, match=r"loss.aligned_mtl_scale_mode must be a str, got 1"):
        make_weighting("aligned_mtl", TASKS, {"aligned_mtl_scale_mode": 1})
