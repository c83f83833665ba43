"""Fixed weights: sum_t w_t L_t (the equal-weight sum by default)."""
import torch

from codebase.training.weighting.base import Weighting
from codebase.training.weighting.registry import Setting, register


def _weights_mapping(value) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value.values())


@register("fixed")
class FixedWeighting(Weighting):
    """sum_t w_t L_t with fixed weights (``loss.task_weights``, {task: weight}; unlisted tasks 1)."""

    settings = {"task_weights": Setting({}, dict, _weights_mapping, "a {task: non-negative number} mapping")}

    def __init__(self, tasks, task_weights=None):
        super().__init__(tasks)
        unknown = set(task_weights or {}) - set(self.tasks)
        if unknown:
            raise ValueError(f"loss.task_weights names tasks not in task_specs: {sorted(unknown)}")
        self.last_weights.copy_(torch.tensor([float((task_weights or {}).get(t, 1.0)) for t in self.tasks]))
        self.register_buffer("weights", self.last_weights.clone(), persistent=False)  # the config is the source

    def combine(self, losses):
        indices = self.present(losses)
        return self.weighted_sum(losses, indices, self.of_tasks(self.weights, indices))
