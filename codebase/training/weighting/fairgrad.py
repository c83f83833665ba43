"""FairGrad, alpha-fair resource allocation (Ban & Ji, ICML 2024), from torchjd."""

from codebase.training.weighting.registry import Setting, positive, register
from codebase.training.weighting.torchjd_adapter import TorchJDWeighting


@register("fairgrad")
class FairGrad(TorchJDWeighting):
    """Weights w >= 0 with (G G^T w)_t = w_t^(-1/alpha) (scipy's least squares): the step that is
    alpha-fair in the tasks' improvements; alpha = 1 is proportional fairness (Nash-MTL's
    condition), larger alpha favours the worst task (``loss.fairgrad_alpha``). The weights carry
    their own scale (they shrink as the gradients grow), as in the paper; not rescaled here.
    """

    setting_prefix = "fairgrad_"
    mean_scale = False
    settings = {"alpha": Setting(1.0, float, positive, "> 0")}

    def __init__(self, tasks, alpha=1.0):
        from torchjd.aggregation import FairGradWeighting  # here, not at import: torchjd costs a script's start 0.4 s
        super().__init__(tasks, FairGradWeighting(alpha=alpha))
