"""Conflict-Averse Gradient descent, CAGrad (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021)."""
import math

import numpy as np
import scipy.optimize
import torch

from codebase.training.weighting.base import GradientWeighting
from codebase.training.weighting.registry import Setting, non_negative, register


@register("cagrad")
class CAGrad(GradientWeighting):
    """d = g0 + c ||g0|| u with g0 the mean gradient and u the unit vector that maximises the worst
    task's improvement min_t g_t . d over the ball ||d - g0|| <= c ||g0||; divided by 1 + c^2 when
    ``loss.cagrad_rescale``. c = 0 is the mean gradient; times T here (the scale of the equal-weight sum), so c = 0 is
    the equal-weight sum. Solved on the Gram matrix (``cagrad_coefficients``).
    """

    setting_prefix = "cagrad_"
    settings = {"c": Setting(0.4, float, non_negative, ">= 0"),
                "rescale": Setting(True, bool)}

    def __init__(self, tasks, c=0.4, rescale=True):
        super().__init__(tasks)
        self.c, self.rescale = c, rescale

    def coefficients(self, indices, gram, losses):
        weights = len(indices) * torch.from_numpy(cagrad_coefficients(gram.numpy(), self.c))
        return weights / (1 + self.c ** 2) if self.rescale else weights


def cagrad_coefficients(gram: np.ndarray, c: float) -> np.ndarray:
    """Coefficients v [T] of CAGrad's direction d = sum_t v_t g_t (before rescaling), from gram [T, T].

    With the Gram matrix G G^T = Q diag(lambda) Q^T (normalised by its largest diagonal entry; the
    coefficients do not depend on the scale), a direction in the gradients' span is u = G^T Q
    lambda^-1/2 y with |u| = |y|, and g_t . u = (Q lambda^1/2 y)_t. The problem is then
    max s over (y, s) such that g_t . g0 + c |g0| (Q lambda^1/2 y)_t >= s for all t and |y| <= 1:
    smooth constraints in rank(G) + 1 variables, solved with scipy's SLSQP.
    """
    count = gram.shape[0]
    mean = np.full(count, 1.0 / count)
    scale = float(np.max(np.diag(gram)))
    if c == 0 or scale <= 0:
        return mean
    normalised = gram / scale
    eigenvalues, eigenvectors = np.linalg.eigh(normalised)
    keep = eigenvalues > 1e-10 * eigenvalues.max()
    eigenvalues, eigenvectors = eigenvalues[keep], eigenvectors[:, keep]
    basis = eigenvectors * np.sqrt(eigenvalues)  # [T, r]: g_t . u = (basis @ y)_t
    improvements = normalised.mean(axis=1)  # [T]: g_t . g0
    radius = c * math.sqrt(max(float(normalised.mean()), 0.0))  # c |g0|
    rank = basis.shape[1]
    direction_jacobian = np.hstack([radius * basis, -np.ones((count, 1))])  # [T, r + 1]
    constraints = [
        {"type": "ineq", "fun": lambda x: improvements + radius * basis @ x[:rank] - x[rank],
         "jac": lambda x: direction_jacobian},
        {"type": "ineq", "fun": lambda x: np.array([1.0 - x[:rank] @ x[:rank]]),
         "jac": lambda x: np.append(-2 * x[:rank], 0.0)[None]},
    ]
    objective_gradient = np.append(np.zeros(rank), -1.0)
    start = np.append(np.zeros(rank), improvements.min())
    result = scipy.optimize.minimize(lambda x: -x[rank], start, jac=lambda x: objective_gradient, method="SLSQP",
                                     constraints=constraints, options={"ftol": 1e-12, "maxiter": 200})
    y = result.x[:rank]
    length = float(np.linalg.norm(y))
    if length > 1:
        y = y / length
    return mean + radius * eigenvectors @ (y / np.sqrt(eigenvalues))
