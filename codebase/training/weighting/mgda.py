"""MGDA, multiple-gradient descent as multi-task learning (Désidéri 2012; Sener & Koltun, NeurIPS 2018),
from torchjd."""

from codebase.training.weighting.registry import Setting, positive, register
from codebase.training.weighting.torchjd_adapter import TorchJDWeighting


@register("mgda")
class MGDA(TorchJDWeighting):
    """The minimum-norm point of the convex hull of the task gradients (Frank-Wolfe on the Gram
    matrix, Sener & Koltun's Algorithm 2: at most ``loss.mgda_max_iters`` steps, stopping once a
    step moves less than ``loss.mgda_epsilon``); its convex weights times T here. Where the hull
    holds 0 (a Pareto-stationary point) the shared gradient is 0.
    """

    setting_prefix = "mgda_"
    settings = {"epsilon": Setting(0.001, float, positive, "> 0"),
                "max_iters": Setting(100, int, positive, "> 0")}

    def __init__(self, tasks, epsilon=0.001, max_iters=100):
        from torchjd.aggregation import MGDAWeighting  # here, not at import: torchjd costs a script's start 0.4 s
        super().__init__(tasks, MGDAWeighting(epsilon=epsilon, max_iters=max_iters))
