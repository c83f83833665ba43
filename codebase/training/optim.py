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
