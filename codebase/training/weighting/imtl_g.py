"""IMTL-G, the gradient half of Impartial Multi-task Learning (Liu et al., ICLR 2021), from torchjd."""

from codebase.training.weighting.registry import register
from codebase.training.weighting.torchjd_adapter import TorchJDWeighting


@register("imtl_g")
class IMTLG(TorchJDWeighting):
    """The combination d = sum_t w_t g_t (weights summing to 1, times T here) whose projection on
    every task's unit gradient is the same: w proportional to pinv(G G^T) ||g||, torchjd's
    generalisation to linearly dependent gradients. No settings.
    """

    def __init__(self, tasks):
        from torchjd.aggregation import IMTLGWeighting  # here, not at import: torchjd costs a script's start 0.4 s
        super().__init__(tasks, IMTLGWeighting())
