"""A tiny train script on random data, used by the harness tests (in-process and as a subprocess).

It uses every source of randomness a real run does (python, numpy and torch RNGs, dropout,
shuffling, per-sample noise as augmentation), so any state the harness fails to restore shows
up as a difference in the final weights. Knobs under "toy" let tests interrupt it, inject a
non-finite loss or watch its progress.

    python tests/harness_toy.py --set run.save_dir=DIR [--set toy.print_steps=true] ...
"""

import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codebase.config import FIXES_THE_RUN, MAY_CHANGE, RUN_RESUME_RULES, parse_cli
from codebase.data.loaders import EpochLoader
from codebase.runtime import distributed
from codebase.runtime.device import autocast, make_grad_scaler
from codebase.runtime.progress import progress
from codebase.training.loop import EpochPlan, fit, record_step
from codebase.training.run_folder import Run  # noqa: E402
from codebase.training.selection import make_selection  # noqa: E402
from codebase.training.stopping import check_finite, should_stop

CONFIG = {
    "seed": 0,
    "device": "cpu",
    "run": {"name": "toy", "save_dir": "saved", "plots": False},
    "model": {"hidden": 16, "ballast": 0},  # ballast: extra buffer floats, to make checkpoints slow to write
    "train": {"epochs": 4, "batch_size": 8, "lr": 0.01, "amp": "auto", "num_workers": 0, "monitor": "accuracy",
              "patience": 0},
    # Test hooks: interrupt_at/nan_at = [epoch, step]; print_steps prints "step E S" per step;
    # scores: a "score" per epoch added to the evaluation (to force which epoch model selection picks).
    # kill_rank_at = [rank, epoch, step]: that process SIGKILLs itself there, once: only while the file
    # kill_marker does not exist yet (it creates it), so a group restarted by torchrun runs clean.
    "toy": {"samples": 40, "interrupt_at": [], "signal": "SIGINT", "nan_at": [], "print_steps": False, "scores": [],
            "kill_rank_at": [], "kill_marker": ""},
}

# On --resume: the model and the training fix the run, except what the tests change when resuming.
RESUME_RULES = {**RUN_RESUME_RULES, "model": FIXES_THE_RUN, "train": FIXES_THE_RUN, "train.epochs": MAY_CHANGE,
                "train.lr": MAY_CHANGE, "train.amp": MAY_CHANGE, "train.num_workers": MAY_CHANGE,
                "train.patience": MAY_CHANGE, "toy": MAY_CHANGE}


class ToyData(torch.utils.data.Dataset):
    """Points in 8-D, 3 classes; __getitem__ adds noise from the torch RNG like an augmentation."""

    def __init__(self, samples: int, train: bool):
        generator = torch.Generator().manual_seed(1234 if train else 4321)
        self.inputs = torch.randn(samples, 8, generator=generator)
        self.labels = (self.inputs[:, 0] > 0).long() + (self.inputs[:, 1] > 0.5).long()
        self.train = train

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        noise = 0.1 * torch.randn(8) if self.train else torch.zeros(8)
        return self.inputs[index] + noise, self.labels[index]


class ToyModel(nn.Module):
    def __init__(self, hidden: int, ballast: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 3))
        self.register_buffer("ballast", torch.zeros(ballast))

    def forward(self, x):  # [B, 8] -> [B, 3]
        return self.layers(x)


def evaluate_model(model: nn.Module, loader, device) -> dict:
    """Accuracy and loss over the whole split, summed over ranks, plus nested toy metrics."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # correct, count, loss sum
    usage = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for inputs, labels in loader:
            logits = model(inputs.to(device))
            totals += torch.tensor([(logits.argmax(1) == labels).sum().item(), len(labels),
                                    nn.functional.cross_entropy(logits, labels, reduction="sum").item()],
                                   dtype=torch.float64)
            usage += torch.stack([(logits[:, 0] > 0).sum(), (logits[:, 0] <= 0).sum()]).double()
    distributed.all_reduce_sum([totals, usage])
    accuracy = (totals[0] / totals[1]).item()
    return {"loss": (totals[2] / totals[1]).item(), "accuracy": accuracy,
            "segmentation": {"MA": {"iou": accuracy / 2, "dice": accuracy, "aupr": accuracy ** 2},
                             "mean_iou": accuracy / 2},
            "routing": {"segmentation_ma": {"experts_per_image": 1.0, "usage": (usage / totals[1]).tolist()}}}


def weight_image(model: ToyModel) -> np.ndarray:
    """The first layer's weights as a uint8 [hidden, 8, 3] image (the toy's preview)."""
    weights = model.layers[0].weight.detach()  # [hidden, 8]
    scaled = (weights - weights.min()) / (weights.max() - weights.min() + 1e-12)
    return (scaled * 255).round().to(torch.uint8).unsqueeze(-1).expand(-1, -1, 3).numpy()


def main(config: dict) -> list[dict]:
    toy = config["toy"]
    with Run(config, RESUME_RULES) as run:
        device = run.device
        model = ToyModel(config["model"]["hidden"], config["model"]["ballast"]).to(device)
        model = distributed.wrap_model(model, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config["train"]["lr"])
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        scaler = make_grad_scaler(device, config["train"]["amp"])
        train_loader = EpochLoader(ToyData(toy["samples"], train=True), config["train"]["batch_size"],
                                           train=True, seed=config["seed"],
                                           num_workers=config["train"]["num_workers"])
        eval_loader = EpochLoader(ToyData(toy["samples"] // 2, train=False), 16, train=False,
                                          seed=config["seed"])

        def train_one_epoch(epoch: int) -> dict:
            model.train()
            total = 0.0
            for step, (inputs, labels) in enumerate(progress(train_loader, f"epoch {epoch}")):
                if toy["print_steps"]:
                    print(f"step {epoch} {step}", flush=True)
                with autocast(device, config["train"]["amp"]):
                    logits = model(inputs.to(device))
                    cross_entropy = nn.functional.cross_entropy(logits, labels.to(device))
                # numpy and python RNGs must be restored on resume too
                penalty = 1e-3 * float(np.random.rand()) * random.random() * logits.pow(2).mean()
                if toy["nan_at"] == [epoch, step]:
                    penalty = penalty * float("nan")
                loss = cross_entropy + penalty
                check_finite(loss, {"cross_entropy": cross_entropy, "penalty": penalty}, step, epoch)
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.item()
                record_step(epoch, len(train_loader), loss, {"cross_entropy": cross_entropy, "penalty": penalty})
                if toy["interrupt_at"] == [epoch, step]:
                    os.kill(os.getpid(), getattr(signal, toy["signal"]))
                if toy["kill_rank_at"] == [distributed.rank(), epoch, step] and not os.path.exists(toy["kill_marker"]):
                    Path(toy["kill_marker"]).write_text(f"killed at epoch {epoch} step {step}\n")
                    os.kill(os.getpid(), signal.SIGKILL)
                if should_stop():
                    break
            return {"loss": total / (step + 1), "loss_cross_entropy": cross_entropy.item()}

        def evaluate(epoch: int) -> dict:
            metrics = evaluate_model(distributed.unwrap(model), eval_loader, device)
            if toy["scores"]:
                metrics["score"] = toy["scores"][epoch - 1]
            return metrics

        plan = EpochPlan(train_one_epoch, evaluate, loaders=[train_loader],
                         selection=make_selection(config["train"], tasks=[]),
                         test=lambda: evaluate_model(distributed.unwrap(model), eval_loader, device),
                         preview=lambda epoch: {"first_layer": weight_image(distributed.unwrap(model))})
        return fit(run, model, optimizer, scheduler, plan, config["train"]["epochs"], scaler)


if __name__ == "__main__":
    main(parse_cli(CONFIG, description=__doc__))
