"""Optimizer and learning-rate schedule shared by the three train scripts.

Config keys (``optim`` and ``schedule`` sections):
    optim.lr            learning rate of everything but the backbone
    optim.backbone_lr   learning rate of parameters under ``model.backbone`` (lower: it is pretrained)
    optim.weight_decay  AdamW's decoupled weight decay
    schedule.kind       "step" (multiply by schedule.gamma every schedule.step_size epochs) or
                        "cosine" (to 0 over the run's epochs)
"""
import torch

SCHEDULES = ("step", "cosine")


def make_optimizer(modules, lr, backbone_lr, weight_decay, device, undecayed=()):
    """AdamW over the parameters of ``modules``; those under a ``backbone`` attribute get ``backbone_lr``.

    ``undecayed``: further parameters trained at ``lr`` without weight decay (a loss weighting's
    learned task weights, which decay would pull towards weight 1 for no reason). Uses the fused
    CUDA kernel where the parameters live on a GPU.
    """
    backbone, rest = [], []
    for module in modules:
        owner = getattr(module, "backbone", None)
        backbone_ids = {id(p) for p in owner.parameters()} if owner is not None else set()
        for parameter in module.parameters():
            if parameter.requires_grad:
                (backbone if id(parameter) in backbone_ids else rest).append(parameter)
    groups = [{"params": rest, "lr": lr, "name": "heads"}]
    if backbone:
        groups.append({"params": backbone, "lr": backbone_lr, "name": "backbone"})
    undecayed = [parameter for parameter in undecayed if parameter.requires_grad]
    if undecayed:
        groups.append({"params": undecayed, "lr": lr, "weight_decay": 0.0, "name": "loss weighting"})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=torch.device(device).type == "cuda")


def make_scheduler(optimizer, kind, epochs, step_size=30, gamma=0.1):
    """Per-epoch schedule: StepLR or CosineAnnealingLR."""
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    raise ValueError(f"schedule.kind must be one of {SCHEDULES}, got {kind!r}")


# Scheduler state that is progress through the run; the rest (step_size, gamma, T_max, base_lrs, ...)
# is what the run's settings made it.
_PROGRESS = ("last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step", "_last_lr")


def restore_training_state(optimizer, scheduler, optimizer_state: dict | None, scheduler_state: dict | None) -> bool:
    """Load a checkpoint's optimizer and scheduler state into the ones built from today's settings,
    keeping today's settings: where optim.* or schedule.* (or the epochs a cosine schedule spans)
    changed since the checkpoint, each group's initial learning rate and weight decay are today's,
    the schedule is today's at the checkpoint's epoch (its closed form), and the optimizer's moments
    are the checkpoint's. Unchanged settings load the checkpoint's state as it is (a resumed run
    equals an uninterrupted one). Returns whether any setting was applied."""
    hyper = ("initial_lr", "weight_decay") if scheduler is not None else ("lr", "weight_decay")
    now_groups = [{key: group.get(key) for key in hyper} for group in optimizer.param_groups]
    now_schedule = ({key: value for key, value in scheduler.state_dict().items() if key not in _PROGRESS}
                    if scheduler is not None else None)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    then_groups = [{key: group.get(key) for key in hyper} for group in optimizer.param_groups]
    if scheduler is None:  # no schedule: the rates and decay are the settings themselves
        for group, settings in zip(optimizer.param_groups, now_groups):
            group.update(settings)
        return now_groups != then_groups
    if scheduler_state is None:
        return False
    then_schedule = {key: value for key, value in scheduler_state.items() if key not in _PROGRESS}
    if now_groups == then_groups and now_schedule == then_schedule:
        scheduler.load_state_dict(scheduler_state)
        return False
    for group, settings in zip(optimizer.param_groups, now_groups):
        group.update(settings)
    scheduler.load_state_dict({**now_schedule, **{key: scheduler_state[key] for key in _PROGRESS
                                                  if key in scheduler_state}})
    learning_rates = scheduler._get_closed_form_lr()
    for group, learning_rate in zip(optimizer.param_groups, learning_rates):
        group["lr"] = learning_rate
    scheduler._last_lr = list(learning_rates)
    return True
