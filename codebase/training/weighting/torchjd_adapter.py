"""The adapter from torchjd's Gramian weightings to this package's gradient methods.

torchjd (https://torchjd.org, Jacobian descent for PyTorch) ships multi-task gradient methods as
*Gramian weightings*: modules that map the Gram matrix G G^T [T, T] of the per-task gradients to
one weight per task, which is what `GradientWeighting.coefficients` returns. So a torchjd method
runs inside `GradientWeighting.backward` unchanged: per-task gradients of the shared parameters,
averaged over processes under torchrun, the Gram matrix of the unscaled gradients (float64, CPU)
given to the torchjd module, its weights logged as the task weights, the GradScaler's overflow
steps skipped. A method module (mgda.py, upgrad.py, ...) registers a subclass that declares its
settings and builds its torchjd module from them, importing torchjd there: a script that trains
with another method does not pay torchjd's import (0.4 s of its start).
"""
import torch

from codebase.training.weighting.base import GradientWeighting
from codebase.training.weighting.registry import Setting, non_negative


class TorchJDWeighting(GradientWeighting):
    """A gradient method whose coefficients are those of a torchjd Gramian weighting (``method``).

    ``mean_scale``: the method's published weights sum to 1 where gradients agree (a convex
    combination, or the mean's 1/T per task), so they are multiplied by T here, to the scale of the
    equal-weight sum (codebase/training/weighting/__init__.py); False for methods whose weights
    carry their own scale.
    """

    mean_scale = True

    def __init__(self, tasks, method: torch.nn.Module | None):
        super().__init__(tasks)
        self.method = method  # None where `solve` is overridden; holds no checkpointed state itself

    def coefficients(self, indices, gram, losses):
        weights = self.solve(indices, gram).to(torch.float64)
        return len(indices) * weights if self.mean_scale else weights

    def solve(self, indices: list[int], gram: torch.Tensor) -> torch.Tensor:
        """The torchjd module's weights [T'] for the present tasks' Gram matrix [T', T']."""
        return self.method(gram)


# UPGrad's and DualProj's quadratic programs: torchjd normalises the Gram matrix (norm_eps guards the
# division) and adds reg_eps to its diagonal so that it is positive definite.
PROJECTOR_SETTINGS = {"norm_eps": Setting(0.0001, float, non_negative, ">= 0"),
                      "reg_eps": Setting(0.0001, float, non_negative, ">= 0")}


def projector(norm_eps: float, reg_eps: float):
    """torchjd's dual-cone projector (quadprog, torchjd.linalg.QuadprogProjector) with these settings."""
    from torchjd.linalg import QuadprogProjector  # here, not at import: torchjd costs a script's start 0.4 s
    return QuadprogProjector(norm_eps=norm_eps, reg_eps=reg_eps)
