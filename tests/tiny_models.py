"""Small multi-task models the model, routing and expert tests share, and hooks that count what runs."""
import torch

from codebase.model import MultiTaskModel

SPECS = {"classification_rg": 5, "classification_mer": 3, "segmentation_ma": 1, "segmentation_od": 1}


def small_model(specs=SPECS, experts=3, **kw):
    torch.manual_seed(0)
    return MultiTaskModel(specs, "resnet18", experts, pretrained="none", **kw)


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    return calls


def count_expert_calls(model):
    """{(task, expert index): forward calls so far} for every expert module of the model."""
    calls = {}
    for task, bank in model.experts.items():
        for index, expert in enumerate(bank.experts):
            calls[task, index] = 0

            def hook(mod, args, out, key=(task, index)):
                calls[key] += 1
            expert.register_forward_hook(hook)
    return calls
