"""Aligned-MTL, independent component alignment (Senushkin et al., CVPR 2023), from torchjd."""

from codebase.training.weighting.registry import Setting, register
from codebase.training.weighting.torchjd_adapter import TorchJDWeighting

SCALE_MODES = ("min", "median", "rmse")


@register("aligned_mtl")
class AlignedMTL(TorchJDWeighting):
    """The task gradients replaced by orthogonal ones of equal norm (G -> sqrt(scale) V S^-1 V^T G
    from the eigendecomposition of the Gram matrix, its condition number brought to 1), then
    averaged; times T here. ``loss.aligned_mtl_scale_mode``: the eigenvalue that sets the common
    norm, "min" (the paper's Algorithm 1), "median" or "rmse" (the mean, as its code).
    """

    setting_prefix = "aligned_mtl_"
    settings = {"scale_mode": Setting("min", str, lambda mode: mode in SCALE_MODES,
                                      "one of " + ", ".join(map(repr, SCALE_MODES)))}

    def __init__(self, tasks, scale_mode="min"):
        from torchjd.aggregation import AlignedMTLWeighting  # here, not at import: torchjd costs a script's start 0.4 s
        super().__init__(tasks, AlignedMTLWeighting(scale_mode=scale_mode))
