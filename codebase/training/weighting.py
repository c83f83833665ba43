"""Multi-task loss weightings: one registry entry per method.

A weighting sees the per-task losses of a step ({task: scalar tensor}) and writes the gradients of
all parameters. Loss-based methods (fixed, uncertainty, DWA, RLW, FAMO) combine the losses into one
scalar and backpropagate it. Gradient methods (GradNorm, PCGrad, CAGrad; ``owns_backward``) form
the per-task gradients of the shared parameters, combine them, and write the combination into the
shared parameters' ``.grad``.

How per-task gradients are formed (``GradientWeighting.backward``): for each task present,
``torch.autograd.grad`` of its (GradScaler-scaled) loss with respect to the shared parameters
(graph retained), flattened and stacked into a matrix G [T, P] (a task whose loss does not reach a
shared parameter contributes zeros there); the extra term (e.g. gate regularisers) adds one more
row. ``reduce`` (under DDP: an all-reduce mean) is applied to that matrix so every process combines
the same gradients. The method turns the T x T Gram matrix G G^T of the unscaled gradients
(divided by the scaler's scale squared; on the CPU in float64) into one coefficient per task, and
the shared gradient is sum_t w_t g_t plus the extra row, at the scaler's scale like every other
``.grad`` (``scaler.step`` unscales all of them and skips the step on inf/NaN). One ordinary backward
of (sum of task losses + extra) then fills the task-specific parameters, and the shared ``.grad``
are overwritten. Every method's combination is a linear combination of the task gradients, so
``task_weights()`` reports its exact coefficients. Cost per step: T (+1) extra backward passes
through the shared parameters and a [T (+1), P] float32 matrix.

Scale: every method is on the scale of the equal-weight sum (weight 1 per task). The weights of
fixed (by default), DWA, RLW, FAMO and GradNorm sum to the number of tasks T; uncertainty starts at
1 per task, and PCGrad's and CAGrad's coefficients are 1 per task where no gradients conflict (resp.
c = 0, without rescaling), so their sums move around T. Methods that their papers state with weights
summing to 1 (RLW, FAMO, CAGrad's mean gradient) are multiplied by T here, so that the gate
regularisers, which are added with their own fixed weights, keep the same strength relative to the
task losses whichever method is chosen.

Settings are flat keys of the config's ``loss`` section (``loss.dwa_temperature``,
``loss.cagrad_c``, ...): each method's keys start with its name, except fixed's ``task_weights``.
"""
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import nn

from codebase.config import Rule

WEIGHTINGS: dict[str, type["Weighting"]] = {}


@dataclass(frozen=True)
class Setting:
    """One setting of a weighting: its default, type (float, int, bool or dict) and allowed range."""

    default: object
    kind: type
    check: Callable[[object], bool] | None = None
    expected: str = ""


def register(name: str):
    """Class decorator: add a Weighting subclass to WEIGHTINGS under ``name``."""
    def add(cls):
        if name in WEIGHTINGS:
            raise ValueError(f"loss weighting {name!r} is already registered ({WEIGHTINGS[name].__name__})")
        cls.name = name
        WEIGHTINGS[name] = cls
        return cls
    return add


def setting_key(cls: type["Weighting"], setting: str) -> str:
    """The config key (inside ``loss``) of a weighting's setting, e.g. "dwa_temperature"."""
    return f"{cls.setting_prefix}{setting}"


def default_settings() -> dict:
    """Every registered method's settings with their defaults, as flat ``loss`` config keys."""
    return {setting_key(cls, name): setting.default
            for cls in WEIGHTINGS.values() for name, setting in cls.settings.items()}


def setting_rules() -> dict:
    """A config rule (codebase.config.Rule) for every method's setting, keyed ``loss.<key>``."""
    def rule(key, setting):
        def check(value):
            try:
                _validated(key, value, setting)
            except ValueError:
                return False
            return True
        expected = {float: "a finite number", int: "an integer", bool: "true or false", dict: "a mapping"}[setting.kind]
        return Rule(check, f"{expected}{' ' + setting.expected if setting.expected else ''}")
    return {f"loss.{setting_key(cls, name)}": rule(f"loss.{setting_key(cls, name)}", setting)
            for cls in WEIGHTINGS.values() for name, setting in cls.settings.items()}


def make_weighting(name: str, tasks: Sequence[str], settings: Mapping | None = None) -> "Weighting":
    """The weighting ``name`` for ``tasks``, configured from flat ``settings`` (keys as in ``loss``).

    Keys of other registered methods are accepted and ignored (a config lists every method's
    defaults); any other key, a value of the wrong type or out of range raises ValueError.
    """
    if name not in WEIGHTINGS:
        raise ValueError(f"loss.weighting must be one of {', '.join(sorted(WEIGHTINGS))}, got {name!r}")
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"loss weighting needs a non-empty list of distinct task names, got {tasks}")
    cls = WEIGHTINGS[name]
    known_elsewhere = set(default_settings())
    own = {setting_key(cls, key): key for key in cls.settings}
    unknown = sorted(key for key in (settings or {}) if key not in own and key not in known_elsewhere)
    if unknown:
        raise ValueError(f"unknown loss weighting settings {', '.join('loss.' + k for k in unknown)}; "
                         f"{name} takes {', '.join('loss.' + k for k in own) or 'none'}")
    values = {}
    for key, attribute in own.items():
        if key in (settings or {}):
            values[attribute] = _validated(f"loss.{key}", settings[key], cls.settings[attribute])
    return cls(tasks, **values)


def _validated(key: str, value, setting: Setting):
    kind = setting.kind
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        value = int(value)
    elif kind is bool and isinstance(value, bool):
        pass
    elif kind is dict and (value is None or isinstance(value, Mapping)):
        value = dict(value or {})
    else:
        raise ValueError(f"{key} must be a {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")
    if setting.check is not None and not setting.check(value):
        raise ValueError(f"{key} must be {setting.expected}, got {value!r}")
    return value


class Weighting(nn.Module):
    """Base class: combine per-task losses, write the gradients of a step.

    Learnable or stateful weights are parameters or persistent buffers (they checkpoint with
    state_dict); the weights of the last step (``task_weights``) are not saved.
    ``losses`` given to a method may hold any non-empty subset of ``tasks``.
    """

    name = ""
    setting_prefix = ""
    settings: dict[str, Setting] = {}
    owns_backward = False
    needs_losses_after = False  # True: after_step needs the same batch's losses after the optimizer step
    # The mean of a tensor over the processes, set by the training loop under torchrun (None: one
    # process). A method whose weights come from the step's losses averages them with it, so every
    # process weighs its share of the batch alike (FAMO).
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        self.tasks = tuple(tasks)
        self.register_buffer("last_weights", torch.ones(len(self.tasks)), persistent=False)  # for logging

    def present(self, losses: Mapping[str, torch.Tensor]) -> list[int]:
        """Indices (in ``tasks`` order) of the tasks in ``losses``; checks the names."""
        unknown = set(losses) - set(self.tasks)
        if unknown or not losses:
            raise ValueError(f"task losses {sorted(losses)} must be a non-empty subset of {self.tasks}")
        return [index for index, task in enumerate(self.tasks) if task in losses]

    def loss_vector(self, losses: Mapping[str, torch.Tensor], indices: list[int]) -> torch.Tensor:
        """The losses of ``indices`` as one float32 tensor [T']."""
        return torch.stack([losses[self.tasks[i]].float() for i in indices])

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The scalar to backpropagate (loss-based methods); the plain sum for gradient methods."""
        return self.loss_vector(losses, self.present(losses)).sum()

    def backward(self, losses: Mapping[str, torch.Tensor], extra: torch.Tensor | None,
                 shared: Sequence[nn.Parameter], scaler: torch.amp.GradScaler | None = None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Accumulate the gradients of combine(losses) + extra into ``.grad`` (zero them before)."""
        total = self.combine(losses)
        if extra is not None:
            total = total + extra
        self.backward_combined(total, scaler, reduce)

    def backward_combined(self, total: torch.Tensor, scaler: torch.amp.GradScaler | None = None,
                          reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Backpropagate an already combined loss; ``reduce`` then averages the gradients of the
        method's own parameters (``extra_parameters``) over the processes, as DDP does for the
        model's, so they stay equal on every process (uncertainty weighting's log-variances)."""
        _scaled(total, scaler).backward()
        if reduce is not None:
            for parameter in self.extra_parameters():
                if parameter.grad is not None:
                    parameter.grad.copy_(reduce(parameter.grad))

    def end_epoch(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        """Called after each training epoch with the epoch's mean loss per task."""

    def after_step(self, losses_after: Mapping[str, torch.Tensor],
                   reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Called after the optimizer step with the same batch's losses (no grad); most methods ignore it."""

    def task_weights(self) -> dict[str, float]:
        """The coefficient of each task's loss (or gradient) in the last step."""
        return {task: float(weight) for task, weight in zip(self.tasks, self.last_weights.tolist())}

    def extra_parameters(self) -> list[nn.Parameter]:
        """Learnable parameters that go into the model's optimizer (no weight decay)."""
        return []

    def weighted_sum(self, losses: Mapping[str, torch.Tensor], indices: list[int], weights: torch.Tensor) -> torch.Tensor:
        """sum_t w_t L_t over ``indices`` (weights [T'], any device); records the weights."""
        self._record(indices, weights)
        values = self.loss_vector(losses, indices)
        return (weights.to(values) * values).sum()

    def _record(self, indices: list[int], weights: torch.Tensor) -> None:
        self.last_weights.zero_()
        self.last_weights[indices] = weights.detach().to(self.last_weights)


def _scaled(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    return scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss


def _positive(value) -> bool:
    return value > 0


def _non_negative(value) -> bool:
    return value >= 0


class _SmallAdam(nn.Module):
    """Adam (with L2 weight decay, as torch.optim.Adam) for a weighting's own small vector; its
    moments are buffers, so they checkpoint with the weighting."""

    def __init__(self, size: int, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.register_buffer("exp_avg", torch.zeros(size))
        self.register_buffer("exp_avg_sq", torch.zeros(size))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def step(self, value: torch.Tensor, grad: torch.Tensor) -> None:
        """Update ``value`` in place with ``grad`` (same shape)."""
        grad = grad + self.weight_decay * value
        beta1, beta2 = self.betas
        self.steps += 1
        count = int(self.steps)
        self.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        first = self.exp_avg / (1 - beta1 ** count)
        second = self.exp_avg_sq / (1 - beta2 ** count)
        value.sub_(self.lr * first / (second.sqrt() + self.eps))


# ---------------------------------------------------------------------------------------------
# Loss-based methods


@register("fixed")
class FixedWeighting(Weighting):
    """sum_t w_t L_t with fixed weights (``loss.task_weights``, {task: weight}; unlisted tasks 1)."""

    settings = {"task_weights": Setting({}, dict, lambda d: all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                 and v >= 0 for v in d.values()),
                                        "a {task: non-negative number} mapping")}

    def __init__(self, tasks, task_weights=None):
        super().__init__(tasks)
        unknown = set(task_weights or {}) - set(self.tasks)
        if unknown:
            raise ValueError(f"loss.task_weights names tasks not in task_specs: {sorted(unknown)}")
        self.last_weights.copy_(torch.tensor([float((task_weights or {}).get(t, 1.0)) for t in self.tasks]))
        self.register_buffer("weights", self.last_weights.clone(), persistent=False)  # the config is the source

    def combine(self, losses):
        indices = self.present(losses)
        return self.weighted_sum(losses, indices, self.weights[indices])


@register("uncertainty")
class UncertaintyWeighting(Weighting):
    """Learned homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    sum_t exp(-s_t) L_t + s_t with one learnable log-variance s_t per task (start 0, weight 1);
    the same form for every task (the regression form's factors 1/2 dropped). ``log_variances``
    go into the model's optimizer (``extra_parameters``). Weights reported: exp(-s_t).
    """

    setting_prefix = "uncertainty_"

    def __init__(self, tasks):
        super().__init__(tasks)
        self.log_variances = nn.Parameter(torch.zeros(len(self.tasks)))

    def combine(self, losses):
        indices = self.present(losses)
        log_variances = self.log_variances[indices]
        self._record(indices, torch.exp(-log_variances.detach()))
        return (torch.exp(-log_variances) * self.loss_vector(losses, indices) + log_variances).sum()

    def extra_parameters(self):
        return [self.log_variances]


@register("dwa")
class DynamicWeightAverage(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-end multi-task learning with attention").

    Weights for epoch e: T * softmax_t(r_t / temperature), r_t = L_t(e-1) / L_t(e-2) from the
    epochs' mean training losses (``end_epoch``); weight 1 for each task in the first two epochs.
    """

    setting_prefix = "dwa_"
    settings = {"temperature": Setting(2.0, float, _positive, "> 0")}

    def __init__(self, tasks, temperature=2.0):
        super().__init__(tasks)
        self.temperature = temperature
        self.register_buffer("loss_history", torch.full((2, len(self.tasks)), math.nan))
        self.register_buffer("weights", torch.ones(len(self.tasks)))

    def combine(self, losses):
        indices = self.present(losses)
        return self.weighted_sum(losses, indices, self.weights[indices])

    def end_epoch(self, epoch, mean_losses):
        missing = [t for t in self.tasks if t not in mean_losses]
        if missing:
            raise ValueError(f"DWA needs every task's mean loss at the end of epoch {epoch}; missing {missing}")
        values = torch.tensor([float(mean_losses[t]) for t in self.tasks], dtype=torch.float64)
        if not (torch.isfinite(values).all() and (values > 0).all()):
            raise ValueError(f"DWA needs positive finite mean losses, got {dict(zip(self.tasks, values.tolist()))} "
                             f"at epoch {epoch}")
        history = torch.stack([self.loss_history[1].cpu().double(), values])  # [2, T]: epochs e-2, e-1
        self.loss_history.copy_(history)
        if torch.isfinite(history).all():
            ratios = history[1] / history[0]  # [T]
            self.weights.copy_(len(self.tasks) * torch.softmax(ratios / self.temperature, dim=0))


@register("rlw")
class RandomLossWeighting(Weighting):
    """Random Loss Weighting (Lin et al., TMLR 2022, "Reasonable effectiveness of random weighting").

    Each step: weights T softmax(z), z ~ N(0, 1) per task (they sum to T, see the module docstring),
    drawn from a CPU generator seeded with ``loss.rlw_seed``; its state checkpoints with the weighting.
    """

    setting_prefix = "rlw_"
    settings = {"seed": Setting(0, int, _non_negative, ">= 0")}

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


@register("famo")
class FastAdaptiveMultitask(Weighting):
    """FAMO (Liu, Liu, Stone & Liu, NeurIPS 2023, "FAMO: Fast Adaptive Multitask Optimization").

    Learnable logits xi [T], z = softmax(xi). Loss: sum_t z_t log(L_t + eps) / c with
    c = sum_t z_t / (L_t + eps) (detached), so task t's gradient has weight z_t / (c (L_t + eps))
    and the weights sum to 1; times T here (module docstring). After the optimizer step, ``after_step`` gets the same batch's new
    losses; the logits then take one Adam step (lr ``loss.famo_lr``, L2 decay ``loss.famo_decay``)
    on the gradient of z . (log L_before - log L_after), raising the weight of tasks that improved
    least. Losses must be non-negative. The caller runs that extra no-grad forward.
    """

    setting_prefix = "famo_"
    needs_losses_after = True
    settings = {"lr": Setting(0.025, float, _positive, "> 0"),
                "decay": Setting(0.001, float, _non_negative, ">= 0"),
                "eps": Setting(1e-8, float, _positive, "> 0")}

    def __init__(self, tasks, lr=0.025, decay=0.001, eps=1e-8):
        super().__init__(tasks)
        self.eps = eps
        self.register_buffer("logits", torch.zeros(len(self.tasks)))
        self.logit_optimizer = _SmallAdam(len(self.tasks), lr, decay)
        self._before: tuple[list[int], torch.Tensor] | None = None

    def combine(self, losses):
        indices = self.present(losses)
        shifted = self.loss_vector(losses, indices) + self.eps  # [T'], this process's losses
        # the losses of the whole batch (every process's mean): the same weights on every process
        seen = shifted.detach() if self.reduce is None else self.reduce(shifted.detach())
        z = torch.softmax(self.logits[indices], dim=0).to(shifted.device)
        weights = len(indices) * z / ((z / seen).sum() * seen)  # T z_t / (c L_t)
        self._before = (indices, seen)
        self._record(indices, weights)
        # the weighted sum: its gradient sum_t w_t grad L_t is that of T sum_t z_t log L_t / c
        return (weights * shifted).sum()

    def after_step(self, losses_after, reduce=None):
        if self._before is None:
            raise RuntimeError("FAMO's after_step needs a combine() of the same step before it")
        indices, before = self._before
        after = torch.stack([losses_after[self.tasks[i]].detach().float() for i in indices]) + self.eps
        if reduce is not None:
            after = reduce(after)
        improvement = (before.log() - after.log()).to(self.logits.device)  # [T']
        if not torch.isfinite(improvement).all():
            return
        with torch.enable_grad():
            logits = self.logits[indices].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.softmax(logits, dim=0), logits, grad_outputs=improvement)
        full = torch.zeros_like(self.logits)
        full[indices] = grad
        self.logit_optimizer.step(self.logits, full)
        self._before = None


# ---------------------------------------------------------------------------------------------
# Gradient methods


class GradientWeighting(Weighting):
    """Base of methods that combine per-task gradients of the shared parameters (module docstring)."""

    owns_backward = True
    needs_losses = False

    def coefficients(self, indices: list[int], gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        """The tasks present (indices into ``tasks``), their Gram matrix [T', T'] (float64, CPU) and
        losses [T'] (float64, CPU; None unless ``needs_losses``) -> coefficients [T'] (float64)."""
        raise NotImplementedError

    def backward(self, losses, extra, shared, scaler=None, reduce=None):
        indices = self.present(losses)
        shared = list(shared)
        task_losses = [losses[self.tasks[i]] for i in indices]
        rows = [_flat_grad(_scaled(loss, scaler), shared) for loss in task_losses]
        if extra is not None:
            rows.append(_flat_grad(_scaled(extra, scaler), shared))
        matrix = torch.stack(rows)  # [T' (+1), P]
        if reduce is not None:
            matrix = reduce(matrix)
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        grads = matrix[:len(indices)]  # [T', P], scaled by `scale`
        gram = (grads @ grads.T).cpu().double() / scale ** 2  # [T', T'] of the unscaled gradients
        loss_values = None
        if self.needs_losses:
            loss_values = torch.stack([loss.detach().float() for loss in task_losses])
            if reduce is not None:
                loss_values = reduce(loss_values)
            loss_values = loss_values.cpu().double()
        if torch.isfinite(gram).all() and (loss_values is None or torch.isfinite(loss_values).all()):
            weights = self.coefficients(indices, gram, loss_values)
        else:  # overflow (fp16): the scaler skips this step; leave the method's state alone
            weights = torch.ones(len(indices), dtype=torch.float64)
        self._record(indices, weights)
        combined = weights.to(grads) @ grads  # [P], scaled like every other .grad
        if extra is not None:
            combined = combined + matrix[-1]
        total = torch.stack([loss.float() for loss in task_losses]).sum()
        if extra is not None:
            total = total + extra
        _scaled(total, scaler).backward()
        offset = 0
        for parameter in shared:
            size = parameter.numel()
            if parameter.grad is not None:  # None: no loss reached it, so its rows were all zeros
                parameter.grad.copy_(combined[offset:offset + size].view_as(parameter))
            offset += size

    def combine(self, losses):
        return self.loss_vector(losses, self.present(losses)).sum()


def _flat_grad(loss: torch.Tensor, shared: list[nn.Parameter]) -> torch.Tensor:
    """d loss / d shared, flattened to float32 [P]; zeros where the loss does not reach a parameter."""
    if not loss.requires_grad:
        return torch.cat([torch.zeros(p.numel(), device=p.device) for p in shared])
    grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros(p.numel(), device=p.device) if g is None else g.reshape(-1).float())
                      for p, g in zip(shared, grads)])


@register("gradnorm")
class GradNorm(GradientWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

    Shared gradient sum_t w_t g_t. Then the weights take one Adam step (lr ``loss.gradnorm_lr``,
    their own update rule, not the model's optimizer) on sum_t |w_t ||g_t|| - target_t|, with
    target_t = mean_s(w_s ||g_s||) * r_t^alpha held constant, r_t = (L_t / L_t(0)) relative to the
    mean over tasks (inverse training rate); then clamped positive and renormalised to sum to T.
    ||g_t|| is the norm over all shared parameters; L_t(0) is the first loss seen for the task
    (that step records it and leaves the weights as they are).
    """

    setting_prefix = "gradnorm_"
    settings = {"alpha": Setting(1.5, float, _non_negative, ">= 0"),
                "lr": Setting(0.025, float, _positive, "> 0")}
    needs_losses = True

    def __init__(self, tasks, alpha=1.5, lr=0.025):
        super().__init__(tasks)
        self.alpha = alpha
        self.register_buffer("weights", torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), math.nan))
        self.weight_optimizer = _SmallAdam(len(self.tasks), lr)

    def coefficients(self, indices, gram, losses):
        weights = self.weights[indices].cpu().double()  # [T']
        initial = self.initial_losses[indices].cpu().double()
        first_seen = torch.isnan(initial)
        if first_seen.any():  # a task's first step: record L_t(0), nothing to balance yet
            self.initial_losses[indices] = torch.where(first_seen, losses, initial).to(self.initial_losses)
            return weights
        norms = gram.diagonal().clamp_min(0).sqrt()  # [T'] ||g_t||
        if (initial > 0).all() and len(indices) > 1:
            ratios = losses / initial
            inverse_rates = ratios / ratios.mean()
            weighted_norms = weights * norms
            targets = weighted_norms.mean() * inverse_rates.pow(self.alpha)
            grad = torch.sign(weighted_norms - targets) * norms  # d/dw_t sum_s |w_s n_s - target_s|
            full = torch.zeros(len(self.tasks), dtype=torch.float64)
            full[indices] = grad
            stepped = self.weights.clone()
            self.weight_optimizer.step(stepped, full.to(stepped))
            updated = self.weights.clone()
            updated[indices] = stepped[indices].clamp_min(1e-6)
            self.weights.copy_(updated * len(self.tasks) / updated.sum())
        return weights


@register("pcgrad")
class PCGrad(GradientWeighting):
    """PCGrad, gradient surgery (Yu et al., NeurIPS 2020).

    Each task's gradient g_i is projected, in a random order of the other tasks (CPU generator
    seeded with ``loss.pcgrad_seed``), onto the normal plane of every g_j it conflicts with
    (g_i . g_j < 0); the shared gradient is the sum of the projected gradients. The projections
    are worked on the Gram matrix, so the result is sum_j w_j g_j with exact coefficients w_j
    (what ``task_weights`` reports).
    """

    setting_prefix = "pcgrad_"
    settings = {"seed": Setting(0, int, _non_negative, ">= 0")}

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


@register("cagrad")
class CAGrad(GradientWeighting):
    """Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021).

    d = g0 + c ||g0|| u with g0 the mean gradient and u the unit vector that maximises the worst
    task's improvement min_t g_t . d over the ball ||d - g0|| <= c ||g0||; divided by 1 + c^2 when
    ``loss.cagrad_rescale``. c = 0 is the mean gradient; times T here (module docstring), so c = 0 is
    the equal-weight sum. Solved on the Gram matrix (``cagrad_coefficients``).
    """

    setting_prefix = "cagrad_"
    settings = {"c": Setting(0.4, float, _non_negative, ">= 0"),
                "rescale": Setting(True, bool)}

    def __init__(self, tasks, c=0.4, rescale=True):
        super().__init__(tasks)
        self.c, self.rescale = c, rescale

    def coefficients(self, indices, gram, losses):
        weights = len(indices) * torch.from_numpy(cagrad_coefficients(gram.numpy(), self.c))
        return weights / (1 + self.c ** 2) if self.rescale else weights


def cagrad_coefficients(gram: np.ndarray, c: float) -> np.ndarray:
    """Coefficients v [T] of CAGrad's direction d = sum_t v_t g_t (before rescaling), from gram [T, T].

    With the Gram matrix G G^T = Q diag(lambda) Q^T (normalised by its largest diagonal entry; the
    coefficients do not depend on the scale), a direction in the gradients' span is u = G^T Q
    lambda^-1/2 y with |u| = |y|, and g_t . u = (Q lambda^1/2 y)_t. The problem is then
    max s over (y, s) such that g_t . g0 + c |g0| (Q lambda^1/2 y)_t >= s for all t and |y| <= 1:
    smooth constraints in rank(G) + 1 variables, solved with scipy's SLSQP.
    """
    count = gram.shape[0]
    mean = np.full(count, 1.0 / count)
    scale = float(np.max(np.diag(gram)))
    if c == 0 or scale <= 0:
        return mean
    normalised = gram / scale
    eigenvalues, eigenvectors = np.linalg.eigh(normalised)
    keep = eigenvalues > 1e-10 * eigenvalues.max()
    eigenvalues, eigenvectors = eigenvalues[keep], eigenvectors[:, keep]
    basis = eigenvectors * np.sqrt(eigenvalues)  # [T, r]: g_t . u = (basis @ y)_t
    improvements = normalised.mean(axis=1)  # [T]: g_t . g0
    radius = c * math.sqrt(max(float(normalised.mean()), 0.0))  # c |g0|
    rank = basis.shape[1]
    direction_jacobian = np.hstack([radius * basis, -np.ones((count, 1))])  # [T, r + 1]
    constraints = [
        {"type": "ineq", "fun": lambda x: improvements + radius * basis @ x[:rank] - x[rank],
         "jac": lambda x: direction_jacobian},
        {"type": "ineq", "fun": lambda x: np.array([1.0 - x[:rank] @ x[:rank]]),
         "jac": lambda x: np.append(-2 * x[:rank], 0.0)[None]},
    ]
    objective_gradient = np.append(np.zeros(rank), -1.0)
    start = np.append(np.zeros(rank), improvements.min())
    result = scipy.optimize.minimize(lambda x: -x[rank], start, jac=lambda x: objective_gradient, method="SLSQP",
                                     constraints=constraints, options={"ftol": 1e-12, "maxiter": 200})
    y = result.x[:rank]
    length = float(np.linalg.norm(y))
    if length > 1:
        y = y / length
    return mean + radius * eigenvectors @ (y / np.sqrt(eigenvalues))
