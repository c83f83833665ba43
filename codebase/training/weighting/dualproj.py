"""DualProj, the mean gradient projected onto the dual cone (Lopez-Paz & Ranzato's GEM projection, NeurIPS
2017, as a multi-task aggregator in Quinton & Rey 2024), from torchjd."""

from codebase.training.weighting.registry import register
from codebase.training.weighting.torchjd_adapter import PROJECTOR_SETTINGS, TorchJDWeighting, projector


@register("dualproj")
class DualProj(TorchJDWeighting):
    """The mean gradient projected onto the dual cone of the task gradients (the nearest direction
    that conflicts with none); times T here, so gradients whose mean conflicts with none give the
    equal-weight sum. One quadratic program on the Gram matrix, settings as UPGrad's
    (``loss.dualproj_norm_eps``, ``loss.dualproj_reg_eps``).
    """

    setting_prefix = "dualproj_"
    settings = PROJECTOR_SETTINGS

    def __init__(self, tasks, norm_eps=0.0001, reg_eps=0.0001):
        from torchjd.aggregation import DualProjWeighting  # here, not at import: torchjd costs a script's start 0.4 s
        super().__init__(tasks, DualProjWeighting(projector=projector(norm_eps, reg_eps)))
