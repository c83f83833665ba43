"""A multi-task training step of a small model on any device, and the batches it takes: what the
device tests share."""
import torch
from tiny_models import small_model

from codebase.engine import MultiTaskLoss, MultiTaskTraining, TrainStep, gate_weights
from codebase.runtime.device import make_grad_scaler
from codebase.training.optim import make_optimizer
from codebase.training.weighting import make_weighting

SIZE = (64, 96)  # (height, width)
LOSS = {"classification": "ce", "focal_gamma": 2.0, "segmentation_alpha": 0.75, "segmentation_gamma": 4.0,
        "focal_weight": 1.0, "dice_weight": 1.0, "dice_on_absent": True, "gate_sparsity": 0.01,
        "gate_load_balance": 0.01, "gate_balanced_assignment": 1.0}


def batch_pair(batch=2, size=SIZE, seed=0):
    """(grading batch, segmentation batch) as the multi-task loaders yield them, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    graded = {"image": torch.randn(batch, 3, *size, generator=generator),
              "rg": torch.randint(0, 5, (batch,), generator=generator),
              "mer": torch.randint(0, 3, (batch,), generator=generator)}
    segmented = {"image": torch.randn(batch, 3, *size, generator=generator),
                 "masks": (torch.rand(batch, 5, *size, generator=generator) > 0.9).to(torch.uint8)}
    return graded, segmented


def make_training(device, amp="off", weighting="fixed", channels_last=False, top_p=0.8, balance_rate=0.05,
                  model=None, dropout=True):
    """A MultiTaskTraining of a small model (resnet18, 4 tasks, 3 experts) on ``device``; without
    ``dropout``, steps on two devices (whose random streams differ) compute the same function."""
    device = torch.device(device)
    model = (model or small_model(top_p=top_p, aspp_channels=16, decoder_channels=16, head_hidden=16,
                                  gate_detach=True)).to(device)
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = MultiTaskLoss(model.tasks, LOSS, gate_weights(LOSS))
    weights = make_weighting(weighting, list(model.task_specs), {}).to(device)
    optimizer = make_optimizer([model], 1e-3, 1e-4, 1e-4, device, undecayed=weights.extra_parameters())
    return MultiTaskTraining(TrainStep(model, criterion), weights, optimizer, device, amp,
                             make_grad_scaler(device, amp), channels_last, balance_rate)
