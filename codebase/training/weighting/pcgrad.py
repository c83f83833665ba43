"""PCGrad, gradient surgery (Yu et al., NeurIPS 2020)."""
import torch

from codebase.training.weighting.base import GradientWeighting
from codebase.training.weighting.registry import Setting, non_negative, register


@register("pcgrad")
class PCGrad(GradientWeighting):
    """Each task's gradient g_i is projected, in a random order of the other tasks (CPU generator
    seeded with ``loss.pcgrad_seed``), onto the normal plane of every g_j it conflicts with
    (g_i . g_j < 0); the shared gradient is the sum of the projected gradients. The projections
    are worked on the Gram matrix, so the result is sum_j w_j g_j with exact coefficients w_j
    (what ``task_weights`` reports).
    """

    setting_prefix = "pcgrad_"
    settings = {"seed": Setting(0, int, non_negative, ">= 0")}

    def __init__(self, tasks, seed=0):
        super().__init__(tasks)
        self.generator = torch.Generator().manual_seed(seed)

    def coefficients(self, indices, gram, losses):
        count = gram.shape[0]
        orders = [[j for j in torch.randperm(count, generator=self.generator).tolist() if j != i] for i in range(count)]
        return pcgrad_coefficients(gram, orders).sum(dim=0)

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])


def pcgrad_coefficients(gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Row i: the projected gradient of task i as coefficients of the original gradients [T, T].

    gram [T, T] = G G^T; orders[i] lists the other tasks in the order task i is projected on them.
    """
    count = gram.shape[0]
    coefficients = torch.eye(count, dtype=gram.dtype)  # [T, T]
    for i in range(count):
        for j in orders[i]:
            dot = coefficients[i] @ gram[:, j]  # g_i^PC . g_j
            if dot < 0 and gram[j, j] > 0:
                coefficients[i, j] -= dot / gram[j, j]
    return coefficients
