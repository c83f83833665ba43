"""Multi-task loss weightings: a package with one module per method.

A weighting sees the per-task losses of a step ({task: scalar tensor}) and writes the gradients of
all parameters through one call, ``weighting.backward(losses, extra, shared, scaler, task_specific)``.
Loss-based methods (fixed, uncertainty, DWA, RLW, FAMO) combine the losses into one scalar and
backpropagate it. Gradient methods (GradNorm, PCGrad, CAGrad, and from torchjd through
torchjd_adapter.py MGDA, IMTL-G, UPGrad, DualProj, Aligned-MTL, GradVac, FairGrad, Nash-MTL;
`GradientWeighting`) form the per-task gradients of the shared parameters, combine them, and
write the combination into the shared parameters' ``.grad`` (base.py says how).

Scale: every method is on the scale of the equal-weight sum (weight 1 per task). The weights of
fixed (by default), DWA, RLW, FAMO and GradNorm sum to the number of tasks T; uncertainty starts at
1 per task, and PCGrad's, UPGrad's and DualProj's coefficients are 1 per task where no gradients
conflict (CAGrad's where c = 0, without rescaling), so their sums move around T. Methods that their
papers state with weights summing to 1 (RLW, FAMO, CAGrad's mean gradient, MGDA, IMTL-G, UPGrad,
DualProj, Aligned-MTL) are multiplied by T here, so that the gate regularisers, which are added
with their own fixed weights, keep the same strength relative to the task losses whichever method
is chosen. FairGrad's and Nash-MTL's weights keep the scale their papers give them.

Adding a method is one new module in this folder: a `Weighting` (or `GradientWeighting`) subclass
decorated with ``@register("name")`` that declares its ``settings`` (``registry.Setting``) under a
``setting_prefix``. Every module here is imported below, so the registry, the train script's
CONFIG and its setting rules, the ``weighting`` experiment grid and the weighting benchmark all
find it with no other edit.
"""
import importlib
import pkgutil

from codebase.training.weighting.base import GradientWeighting, Weighting
from codebase.training.weighting.registry import (
    WEIGHTINGS,
    Setting,
    default_settings,
    install_problem,
    installed_weightings,
    make_weighting,
    register,
    resume_rules,
    setting_rules,
    weighting_from_config,
)

for _module in pkgutil.iter_modules(__path__):  # sorted by name: the registry's order
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["WEIGHTINGS", "GradientWeighting", "Setting", "Weighting", "default_settings", "install_problem",
           "installed_weightings", "make_weighting", "register", "resume_rules", "setting_rules",
           "weighting_from_config"]
