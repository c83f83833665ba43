"""Gradient Vaccine, GradVac (Wang, Tsvetkov, Firat & Cao, ICLR 2021), from torchjd."""
import torch

from codebase.training.weighting.registry import Setting, non_negative, register
from codebase.training.weighting.torchjd_adapter import TorchJDWeighting


@register("gradvac")
class GradVac(TorchJDWeighting):
    """PCGrad with a target: each task's gradient, visiting the others in a random order, is moved
    toward g_j until their cosine reaches the pair's target, an exponential moving average (rate
    ``loss.gradvac_beta``) of the cosines seen so far, starting at 0 (so the first step is PCGrad's);
    the shared gradient is the sum of the moved gradients (1 per task where nothing moves).

    State, checkpointed: the targets [T, T] (a persistent float32 buffer; torchjd's module gets them
    as float64 for each step and gives them back) and the random orders' generator (seeded with
    ``loss.gradvac_seed``; torchjd draws the orders from torch's global generator, which is swapped
    for this one during the call, so training's own random stream is untouched).
    """

    setting_prefix = "gradvac_"
    mean_scale = False
    settings = {"beta": Setting(0.5, float, lambda beta: 0 <= beta <= 1, "in [0, 1]"),
                "eps": Setting(1e-8, float, non_negative, ">= 0"),
                "seed": Setting(0, int, non_negative, ">= 0")}

    def __init__(self, tasks, beta=0.5, eps=1e-8, seed=0):
        from torchjd.aggregation import GradVacWeighting  # here, not at import: torchjd costs a script's start 0.4 s
        super().__init__(tasks, GradVacWeighting(beta=beta, eps=eps))
        self.register_buffer("cosine_targets", torch.zeros(len(self.tasks), len(self.tasks)))
        self.generator = torch.Generator().manual_seed(seed)

    def solve(self, indices, gram):
        present = torch.tensor(indices)
        targets = self.cosine_targets[present][:, present].cpu().double()  # [T', T']
        self.method._phi_t, self.method._state_key = targets, (len(indices), gram.dtype)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.generator.get_state())
            weights = self.method(gram)
            self.generator.set_state(torch.get_rng_state())
        updated = self.cosine_targets.clone()
        updated[present.unsqueeze(1), present] = self.method._phi_t.to(updated)
        self.cosine_targets.copy_(updated)
        self.method.reset()  # the module holds no state between steps: this module's buffer does
        return weights

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])
