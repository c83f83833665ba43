"""UPGrad, unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for Multi-Objective
Optimization", 2024), from torchjd."""

from codebase.training.weighting.registry import register
from codebase.training.weighting.torchjd_adapter import PROJECTOR_SETTINGS, TorchJDWeighting, projector


@register("upgrad")
class UPGrad(TorchJDWeighting):
    """Each task's gradient projected onto the dual cone of all task gradients (the directions that
    conflict with none), the projections averaged; times T here, so gradients that do not conflict
    give the equal-weight sum. The projections are quadratic programs on the Gram matrix (quadprog),
    which torchjd normalises (``loss.upgrad_norm_eps``) and regularises (``loss.upgrad_reg_eps`` on
    its diagonal).
    """

    setting_prefix = "upgrad_"
    settings = PROJECTOR_SETTINGS

    def __init__(self, tasks, norm_eps=0.0001, reg_eps=0.0001):
        from torchjd.aggregation import UPGradWeighting  # here, not at import: torchjd costs a script's start 0.4 s
        super().__init__(tasks, UPGradWeighting(projector=projector(norm_eps, reg_eps)))
