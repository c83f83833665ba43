"""The two base classes of loss weightings, and the Adam step a method uses for its own weights.

`Weighting.backward(losses, extra, shared, scaler)` is the one call a training step makes: it
writes the gradients of every parameter into ``.grad`` and returns the loss it stands for.
Loss-based methods only say how to combine the losses into one scalar (`combine`); the base class
backpropagates it. Gradient methods (`GradientWeighting`) form the per-task gradients of the shared
parameters and say how to combine them (`coefficients`).
"""
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.optim.adam import adam

from codebase.runtime.device import scaled


class Weighting(nn.Module):
    """Base class: combine per-task losses, write the gradients of a step.

    Learnable or stateful weights are parameters or persistent buffers (they checkpoint with
    state_dict); the weights of the last step (``task_weights``) are not saved.
    ``losses`` given to a method may hold any non-empty subset of ``tasks``.
    """

    name = ""
    setting_prefix = ""
    settings: dict = {}  # {setting: codebase.training.weighting.registry.Setting}
    needs_losses_after = False  # True: after_step needs the same batch's losses after the optimizer step
    requires: tuple[str, ...] = ()  # optional packages (import names) the method needs beyond requirements.txt
    install = ""  # the command that installs them
    # The mean of a tensor over the processes, set by the training step under torchrun (None: one
    # process). A method whose weights come from the step's losses or gradients averages them with
    # it, so every process weighs its share of the batch alike.
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
        """The scalar to backpropagate: here the plain sum; loss-based methods weigh it."""
        return self.loss_vector(losses, self.present(losses)).sum()

    def backward(self, losses: Mapping[str, torch.Tensor], extra: torch.Tensor | None,
                 shared: Sequence[nn.Parameter], scaler: torch.amp.GradScaler | None = None,
                 task_specific: Sequence[nn.Parameter] | None = None) -> torch.Tensor:
        """Accumulate the gradients of combine(losses) + extra into ``.grad`` (zero them before) and
        return that loss, detached. ``shared``: the parameters every task shares (gradient methods
        combine the tasks' gradients of these); ``scaler``: the GradScaler of fp16 training, or None;
        ``task_specific``: the other trained parameters (gradient methods use it; None: not known).

        Under torchrun (``reduce`` set), the gradients of the method's own parameters
        (``extra_parameters``) are averaged over the processes, as DDP does for the model's, so
        they stay equal on every process (uncertainty weighting's log-variances).
        """
        total = self.combine(losses)
        if extra is not None:
            total = total + extra
        scaled(total, scaler).backward()
        if self.reduce is not None:
            for parameter in self.extra_parameters():
                if parameter.grad is not None:
                    parameter.grad.copy_(self.reduce(parameter.grad))
        return total.detach()

    def end_epoch(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        """Called after each training epoch with the epoch's mean loss per task."""

    def after_step(self, losses_after: Mapping[str, torch.Tensor]) -> None:
        """Called after the optimizer step with the same batch's losses (no grad) when
        ``needs_losses_after``; other methods ignore it."""

    def task_weights(self) -> dict[str, float]:
        """The coefficient of each task's loss (or gradient) in the last step."""
        return {task: float(weight) for task, weight in zip(self.tasks, self.last_weights.tolist())}

    def extra_parameters(self) -> list[nn.Parameter]:
        """Learnable parameters that go into the model's optimizer (no weight decay)."""
        return []

    def weighted_sum(self, losses: Mapping[str, torch.Tensor], indices: list[int], weights: torch.Tensor) -> torch.Tensor:
        """sum_t w_t L_t over ``indices`` (weights [T'], any device); records the weights."""
        self.record(indices, weights)
        values = self.loss_vector(losses, indices)
        return (weights.to(values) * values).sum()

    def record(self, indices: list[int], weights: torch.Tensor) -> None:
        """Keep the step's weights of the tasks ``indices`` (the others 0) for `task_weights`."""
        if indices == list(range(len(self.tasks))):  # every task: a copy, no index tensor to send to the device
            self.last_weights.copy_(weights.detach())
            return
        self.last_weights.zero_()
        self.last_weights[indices] = weights.detach().to(self.last_weights)

    def of_tasks(self, values: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """``values`` [T] of the tasks ``indices`` (all of them: ``values`` itself, without indexing)."""
        return values if indices == list(range(len(self.tasks))) else values[indices]


class GradientWeighting(Weighting):
    """Base of methods that combine per-task gradients of the shared parameters.

    For each task present, ``torch.autograd.grad`` of its (GradScaler-scaled) loss with respect to
    the shared parameters (graph retained), flattened and stacked into a matrix G [T, P] (a task
    whose loss does not reach a shared parameter contributes zeros there); the extra term (e.g.
    gate regularisers) adds one more row. ``reduce`` (under DDP: an all-reduce mean) is applied to
    that matrix so every process combines the same gradients. The method turns the T x T Gram
    matrix G G^T of the unscaled gradients (divided by the scaler's scale squared; on the CPU in
    float64) into one coefficient per task (`coefficients`), and the shared gradient is
    sum_t w_t g_t plus the extra row, at the scaler's scale like every other ``.grad``
    (``scaler.step`` unscales all of them and skips the step on inf/NaN). One ordinary backward of
    (sum of task losses + extra) then fills the task-specific parameters, and the shared ``.grad``
    are written. Given ``task_specific`` (every other trained parameter) in one process, that backward
    stops at those parameters, so it does not go through the shared ones (the backbone) again; under
    torchrun it is a full backward, the one DDP averages the gradients in. The combination is linear
    in the task gradients, so ``task_weights()`` reports its exact coefficients. Cost per step: T (+1)
    backward passes through the shared parameters, and a [T (+1), P] float32 matrix.
    """

    needs_losses = False  # True: `coefficients` gets the (reduced) task losses too

    def coefficients(self, indices: list[int], gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        """The tasks present (indices into ``tasks``), their Gram matrix [T', T'] (float64, CPU) and
        losses [T'] (float64, CPU; None unless ``needs_losses``) -> coefficients [T'] (float64)."""
        raise NotImplementedError

    def backward(self, losses, extra, shared, scaler=None, task_specific=None):
        indices = self.present(losses)
        shared = list(shared)
        task_losses = [losses[self.tasks[i]] for i in indices]
        reached = [False] * len(shared)  # whether any loss reaches each shared parameter
        rows = [_flat_grad(scaled(loss, scaler), shared, reached) for loss in task_losses]
        if extra is not None:
            rows.append(_flat_grad(scaled(extra, scaler), shared, reached))
        matrix = torch.stack(rows)  # [T' (+1), P]
        if self.reduce is not None:
            matrix = self.reduce(matrix)
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        grads = matrix[:len(indices)]  # [T', P], scaled by `scale`
        gram = (grads @ grads.T).cpu().double() / scale ** 2  # [T', T'] of the unscaled gradients
        loss_values = None
        if self.needs_losses:
            loss_values = torch.stack([loss.detach().float() for loss in task_losses])
            if self.reduce is not None:
                loss_values = self.reduce(loss_values)
            loss_values = loss_values.cpu().double()
        if torch.isfinite(gram).all() and (loss_values is None or torch.isfinite(loss_values).all()):
            weights = self.coefficients(indices, gram, loss_values)
        else:  # overflow (fp16): the scaler skips this step; leave the method's state alone
            weights = torch.ones(len(indices), dtype=torch.float64)
        self.record(indices, weights)
        combined = weights.to(grads) @ grads  # [P], scaled like every other .grad
        if extra is not None:
            combined = combined + matrix[-1]
        total = torch.stack([loss.float() for loss in task_losses]).sum()
        if extra is not None:
            total = total + extra
        if task_specific is not None and self.reduce is None:
            if task_specific:  # none (only shared parameters are trained): nothing left to fill
                torch.autograd.backward(scaled(total, scaler), inputs=list(task_specific))
        else:
            scaled(total, scaler).backward()
        offset = 0
        for parameter, used in zip(shared, reached):
            size = parameter.numel()
            if used:  # otherwise no loss reached it: its rows were all zeros and its .grad stays as it was
                if parameter.grad is None:
                    parameter.grad = torch.empty_like(parameter)  # the parameter's own layout (channels_last)
                parameter.grad.copy_(combined[offset:offset + size].view_as(parameter))
            offset += size
        return total.detach()


class AdamState(nn.Module):
    """torch.optim's Adam (L2 weight decay as torch.optim.Adam) for a weighting's own small vector,
    with its moments as buffers, so they move with ``.to()`` and checkpoint with the weighting."""

    def __init__(self, size: int, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.register_buffer("exp_avg", torch.zeros(size))
        self.register_buffer("exp_avg_sq", torch.zeros(size))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def step(self, value: torch.Tensor, grad: torch.Tensor) -> None:
        """Update ``value`` in place with ``grad`` (same shape)."""
        adam([value], [grad.to(value)], [self.exp_avg], [self.exp_avg_sq], [], [self.steps], foreach=False,
             amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr, weight_decay=self.weight_decay,
             eps=self.eps, maximize=False)


def _flat_grad(loss: torch.Tensor, shared: list[nn.Parameter], reached: list[bool]) -> torch.Tensor:
    """d loss / d shared, flattened to float32 [P]; zeros where the loss does not reach a parameter.
    Marks in ``reached`` (one flag per shared parameter) the parameters the loss reaches."""
    if not loss.requires_grad:
        return torch.cat([torch.zeros(p.numel(), device=p.device) for p in shared])
    grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
    for index, grad in enumerate(grads):
        reached[index] = reached[index] or grad is not None
    return torch.cat([(torch.zeros(p.numel(), device=p.device) if g is None else g.reshape(-1).float())
                      for p, g in zip(shared, grads)])
