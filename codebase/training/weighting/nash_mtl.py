"""Nash-MTL, multi-task learning as a bargaining game (Navon et al., ICML 2022), from torchjd.

Needs cvxpy and ecos, which requirements.txt leaves out (about 270 MB installed with their
solvers): ``pip install "torchjd[nash-mtl]"``. Without them, choosing the method is a one-line
error that says so.
"""
import numpy as np
import torch

from codebase.training.weighting.registry import Setting, non_negative, positive, register
from codebase.training.weighting.torchjd_adapter import TorchJDWeighting


@register("nash_mtl")
class NashMTL(TorchJDWeighting):
    """Weights alpha > 0 with alpha_t (G G^T alpha)_t = 1 (the Nash bargaining solution), found by
    ``loss.nash_mtl_optim_niter`` convex-concave steps (cvxpy, ECOS) from the previous step's
    solution, recomputed every ``loss.nash_mtl_update_weights_every`` steps. The combined gradient's
    squared norm alpha^T G G^T alpha is then T whatever the gradients' scale; it is clipped to
    ``loss.nash_mtl_max_norm`` (default 1, as the paper's code; 0: no clipping). Not rescaled here.

    torchjd's Nash-MTL takes the gradient matrix; here it gets a [T', T'] factor F of the Gram
    matrix (F F^T = G G^T, from its eigendecomposition), which gives the same weights and norms.
    State, checkpointed: the previous solution and step count, one per set of tasks present.
    """

    setting_prefix = "nash_mtl_"
    mean_scale = False
    requires = ("cvxpy", "ecos")
    install = 'pip install "torchjd[nash-mtl]"'
    settings = {"max_norm": Setting(1.0, float, non_negative, ">= 0"),
                "update_weights_every": Setting(1, int, positive, "> 0"),
                "optim_niter": Setting(20, int, positive, "> 0")}

    def __init__(self, tasks, max_norm=1.0, update_weights_every=1, optim_niter=20):
        super().__init__(tasks, None)
        self.options = {"max_norm": max_norm, "update_weights_every": update_weights_every,
                        "optim_niter": optim_niter}
        self.solvers: dict[tuple[int, ...], torch.nn.Module] = {}  # one per set of tasks present

    def solve(self, indices, gram):
        key = tuple(indices)
        if key not in self.solvers:
            self.solvers[key] = self.new_solver(len(indices))
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)
        factor = eigenvectors * eigenvalues.clamp_min(0).sqrt()  # [T', T'], factor @ factor.T = gram
        return self.solvers[key](factor)

    def new_solver(self, count: int) -> torch.nn.Module:
        """torchjd's Nash-MTL weighting (the aggregator's, on a matrix) for ``count`` tasks, fresh."""
        from torchjd.aggregation import NashMTL as TorchJDNashMTL  # here: torchjd costs a script's start 0.4 s
        return TorchJDNashMTL(n_tasks=count, **self.options).weighting

    def get_extra_state(self):
        return {key: {"step": float(solver.step), "alpha": [float(a) for a in solver.prvs_alpha]}
                for key, solver in self.solvers.items()}

    def set_extra_state(self, state):
        self.solvers = {}
        for key, saved in state.items():
            solver = self.new_solver(len(key))
            solver.prvs_alpha = np.array(saved["alpha"])
            if saved["step"] > 0:
                solver._init_optim_problem()  # what its first call builds, from the restored solution
            solver.step = saved["step"]
            self.solvers[tuple(key)] = solver
