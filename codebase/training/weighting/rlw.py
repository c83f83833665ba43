"""Random Loss Weighting (Lin et al., TMLR 2022, "Reasonable effectiveness of random weighting")."""
import torch

from codebase.training.weighting.base import Weighting
from codebase.training.weighting.registry import Setting, non_negative, register


@register("rlw")
class RandomLossWeighting(Weighting):
    """Each step: weights T softmax(z), z ~ N(0, 1) per task (they sum to T, the scale of the
    equal-weight sum), drawn from a CPU generator seeded with ``loss.rlw_seed``; its state
    checkpoints with the weighting.
    """

    setting_prefix = "rlw_"
    settings = {"seed": Setting(0, int, non_negative, ">= 0")}

    def __init__(self, tasks, seed=0):
        super().__init__(tasks)
        self.generator = torch.Generator().manual_seed(seed)

    def combine(self, losses):
        indices = self.present(losses)
        draws = torch.randn(len(self.tasks), generator=self.generator, dtype=torch.float64)  # [T]
        return self.weighted_sum(losses, indices, len(indices) * torch.softmax(draws[indices], dim=0))

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])
