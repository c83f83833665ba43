"""How large each task's gradient on the shared layers of a multi-task run is, and how the tasks' gradients agree.

    python -m experiments.task_gradients saved/experts/mlt_shared_pool/seed_0 saved/experts/mlt_routed/seed_0
    python -m experiments.task_gradients saved/mlt_demo --weights initial --dense --batches 4 --out grads.json

For each run: its model (model.pth; --weights best: best.pth; --weights initial: a fresh model built from
config.json after seeding with the run's seed, as its training started), in training mode, on the first
--batches pairs of training batches of epoch 1 (one grading batch and one segmentation batch, as a training
step draws them: the run's split, seed, size and batch). Each task's loss is the run's (its loss settings),
and its gradient is taken on the layers every task shares (the backbone and the ASPP,
codebase.engine.shared_parameters). Routing is top-p, as after warm-up, or dense with --dense.

Printed per run (markdown), each the mean over the batch pairs:
- each task's gradient L2 norm. Under AdamW the size of the summed gradient hardly matters, but each task's
  share of it sets the direction the shared layers move in;
- the cosine similarity of every two tasks' gradients: negative where two tasks pull the shared layers apart,
  which is what PCGrad and the other gradient methods (codebase/training/weighting) act on.
--out writes the numbers as JSON too. Exit code: 0 done, 2 bad input (one line naming the run).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from codebase.data.loaders import seed_everything
from codebase.data.splits import split_records
from codebase.dataset import build_loaders
from codebase.engine import MultiTaskLoss, TrainStep, gate_weights, shared_parameters, step_inputs
from codebase.errors import run_tool
from codebase.runtime.atomic import atomic_write_text
from inference.run_checks import read_config
from inference.runs import RunError, build_model, open_run, run_kind

WEIGHT_CHOICES = ("last", "best", "initial")


def task_gradients(model, loss_config, pairs, dense=False):
    """{"norm": {task: mean L2 norm}, "cosine": {task: {task: mean cosine}}} of each task's loss gradient on
    the model's shared parameters, over ``pairs`` [(grading batch, segmentation batch)] (training batches:
    "image", "rg", "mer"; "image", "masks")."""
    criterion = MultiTaskLoss(model.tasks, loss_config, gate_weights(loss_config))
    step = TrainStep(model, criterion).train()
    shared = shared_parameters(model)
    norms, cosines = {}, {}
    for pair in pairs:
        losses = step(*step_inputs(pair, model.tasks, torch.device("cpu"), dense))[0]
        flat = {}
        for task, loss in losses.items():
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            flat[task] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                                    for g, p in zip(grads, shared)])
        names = list(flat)
        gram = torch.stack([flat[name] for name in names]).double()  # float64: millions of terms per product
        gram = gram @ gram.T
        norm = gram.diagonal().sqrt()
        for i, task in enumerate(names):
            norms.setdefault(task, []).append(norm[i].item())
            for j, other in enumerate(names):
                cosine = (gram[i, j] / (norm[i] * norm[j])).item() if norm[i] * norm[j] > 0 else 0.0
                cosines.setdefault(task, {}).setdefault(other, []).append(cosine)
    return {"norm": {task: sum(values) / len(values) for task, values in norms.items()},
            "cosine": {task: {other: sum(values) / len(values) for other, values in row.items()}
                       for task, row in cosines.items()}}


def run_model(folder, weights):
    """(config, model on the cpu) of a multi-task run folder with the asked weights; RunError otherwise."""
    folder = Path(folder)
    config = read_config(folder / "config.json")
    if run_kind(config) != "multitask":
        raise RunError(f"{folder}: a {run_kind(config)} run; task gradients need a run of train_mlt_model.py")
    if weights == "initial":
        seed_everything(config["seed"])
        return config, build_model(config)
    return config, open_run(folder, "cpu", weights).model


def training_pairs(config, count):
    """The first ``count`` (grading batch, segmentation batch) pairs of the run's epoch 1, in one process."""
    config = {**config, "data": {**config["data"], "num_workers": 0}}
    splits = split_records(config["data"]["root"], config["data"]["validation"], config["seed"])
    streams = build_loaders(config, splits, torch.device("cpu"))[1]
    grading, segmentation = streams["grading"].epoch(1), streams["segmentation"].epoch(1)
    return [(next(grading), next(segmentation)) for _ in range(count)]


def markdown(name, result):
    tasks = list(result["norm"])
    short = [task.split("_", 1)[1].upper() for task in tasks]
    lines = [f"## {name}", "", "| | gradient norm | " + " | ".join(f"cos {s}" for s in short) + " |",
             "|---" * (len(tasks) + 2) + "|"]
    for task, label in zip(tasks, short):
        cells = [f"{result['norm'][task]:.3g}"] + [f"{result['cosine'][task][other]:+.2f}" for other in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished multi-task run folders")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="last")
    parser.add_argument("--batches", type=int, default=2, help="training batch pairs to average over (default 2)")
    parser.add_argument("--dense", action="store_true", help="every expert runs (warm-up routing), not top-p")
    parser.add_argument("--out", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error(f"--batches {args.batches}: expected at least 1")
    report = {}
    for folder in args.runs:
        config, model = run_model(folder, args.weights)
        seed_everything(config["seed"])  # dropout draws the same masks on every call
        result = task_gradients(model, config["loss"], training_pairs(config, args.batches), args.dense)
        report[str(folder)] = {"weights": args.weights, "dense": args.dense, "batches": args.batches, **result}
        print(markdown(f"{folder} ({args.weights} weights, {'dense' if args.dense else 'top-p'} routing)", result))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(run_tool(main))
