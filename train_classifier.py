"""Train the baseline grading classifier: a ResNet with a Retinopathy Grade head and a Macular Edema Risk head.

    python train_classifier.py --demo                    # synthetic data, CPU, about 3 minutes
    python train_classifier.py --data-root data --device cuda
    python train_classifier.py --set model.backbone=resnet18 --set loss.classification=ce --set loss.class_weights=true
    torchrun --nproc_per_node=4 train_classifier.py --data-root data

The defaults are the reference experiment: ResNet50 from ImageNet weights, images resized to
178 x 268 (height x width), focal loss (gamma 4) on both heads, AdamW at 1e-3 with weight decay
1e-4, the learning rate x0.2 every 8 epochs, 30 epochs of batch 64. Writes saved/<run.name>/
(config.json, checkpoint.pth, model.pth, history.json, train_log.txt, plots/).
"""
import json

from classifier.dataset import (
    build_dataset,
    build_loader,
    grading_class_weights,
    majority_accuracy,
)
from classifier.engine import GradingLoss, evaluate, train_one_epoch
from classifier.model import TASKS, build_model
from classifier.model import predict as predict_grades
from codebase.config import (
    BOOLEAN,
    check_settings,
    choice,
    integer,
    number,
    parse_cli,
    size_hw,
)
from codebase.data.splits import describe, split_records
from codebase.data.synthetic import ensure_dataset
from codebase.errors import run_main
from codebase.evaluation.cost import count_parameters
from codebase.evaluation.previews import PredictionPreview
from codebase.runtime import distributed
from codebase.runtime.device import make_grad_scaler
from codebase.settings import COMMON_RESUME_RULES, COMMON_RULES, task_weights_rule
from codebase.training.loop import EpochPlan, fit
from codebase.training.losses import CLASSIFICATION_LOSSES
from codebase.training.optim import make_optimizer, make_scheduler
from codebase.training.run_folder import TEST_METRICS_FILE, Run
from codebase.training.selection import evaluation_plan, make_selection

CONFIG = {
    "kind": "classifier",                  # the model kind, recorded so a run folder can be rebuilt
    "seed": 0,
    "device": "auto",
    "run": {"name": "resnet50_classifier"},
    "data": {
        "root": "data",
        "image_size": [178, 268],          # (height, width) the grading images are resized to
        "cache_dir": None,                 # decoded-image cache; None: <data.root>/.cache
        "validation": 0.2,                 # carved from the training split by the seed: fraction, image count, or 0
        "num_workers": 4,
        "pin_memory": True,
    },
    "model": {                             # the arguments of classifier.model.GradingClassifier
        "backbone": "resnet50",
        "pretrained": "imagenet",          # "imagenet", "none", or a path to a torchvision state dict
        "head_hidden": 256,                # width of each head's hidden layer
        "dropout": 0.2,
    },
    "loss": {
        "classification": "focal",         # "focal" or "ce"
        "focal_gamma": 4.0,
        "class_weights": False,            # weigh classes by inverse training-set frequency
        "task_weights": {},                # {task: weight}, e.g. {"classification_rg": 2}; unlisted tasks weigh 1
    },
    "optim": {"lr": 1e-3, "backbone_lr": 1e-3, "weight_decay": 1e-4},
    "schedule": {"kind": "step", "step_size": 8, "gamma": 0.2},  # step: lr x gamma every step_size epochs
    "train": {
        "epochs": 30,
        "batch_size": 64,                  # per process
        "eval_batch_size": 64,
        "amp": "auto",                     # auto: bf16 (or fp16 + GradScaler) on CUDA, off on CPU
        "evaluate_on": "validation",       # evaluations during training: "validation", or "test" (explicit; labelled test)
        "evaluate_every": 1,               # epochs between evaluations (and the last epoch)
        "monitor": "mean_primary",         # best.pth: mean over tasks of kappa (grading) / AUPR (lesions), or a metric path
        "patience": 0,                     # early stopping after this many evaluations without a better score; 0: off
    },
}

DEMO = {
    "data.root": "data/synthetic",
    "data.image_size": [96, 144],
    "data.num_workers": 1,
    "model.backbone": "resnet18",
    "model.pretrained": "none",
    "model.head_hidden": 128,
    "loss.classification": "ce",
    "optim.lr": 2.5e-4,                    # from scratch on 160 images, higher rates sit at the class prior longer
    "optim.backbone_lr": 2.5e-4,
    "schedule.kind": "cosine",
    "train.epochs": 25,
    "train.batch_size": 8,
    "train.eval_batch_size": 32,
    "run.name": "classifier_demo",
}


RULES = {
    **COMMON_RULES,
    "kind": choice("classifier"),
    "data.image_size": size_hw(32),
    "model.head_hidden": integer(1),
    "model.dropout": number(0, 1, high_open=True),
    "loss.classification": choice(*CLASSIFICATION_LOSSES),
    "loss.focal_gamma": number(0),
    "loss.class_weights": BOOLEAN,
    "loss.task_weights": task_weights_rule(task.name for task in TASKS),
}


# On --resume (codebase.config): the shared settings' rules, and this script's own.
RESUME_RULES = {
    **COMMON_RESUME_RULES,
}

def validate(config):
    """ConfigError naming the first setting that breaks its rule (RULES)."""
    check_settings(config, RULES)

def final_line(metrics, majority):
    """One line: test RG accuracy 0.720 (majority 0.300) kappa 0.810 | MER ... | joint accuracy 0.680."""
    grades = [f"{grade.upper()} accuracy {metrics[f'{grade}_accuracy']:.3f} (majority {majority[grade]:.3f}) "
              f"kappa {metrics[f'{grade}_kappa']:.3f}" for grade in ("rg", "mer")]
    return "test " + " | ".join(grades) + f" | joint accuracy {metrics['joint_accuracy']:.3f}"


def main(config):
    """Train (or resume) the run that `config` describes; return its history."""
    validate(config)
    with Run(config, RESUME_RULES) as run:
        device, train = run.device, config["train"]
        if config["run"]["demo"] and distributed.is_main_process():
            ensure_dataset(config["data"]["root"])
        distributed.barrier()
        splits = split_records(config["data"]["root"], config["data"]["validation"], config["seed"], ("grading",))
        run.save_splits(describe(splits))
        datasets = {split: build_dataset(config, split, records) for split, records in splits["grading"].items()
                    if records}
        loaders = {split: build_loader(config, dataset, device) for split, dataset in datasets.items()}
        majority = majority_accuracy(datasets["test"])

        model = build_model(config).to(device)
        loss = config["loss"]
        weights = grading_class_weights(datasets["train"]) if loss["class_weights"] else None
        criterion = GradingLoss(loss["classification"], loss["focal_gamma"], loss["task_weights"], weights).to(device)
        wrapped = distributed.wrap_model(model, device)
        optimizer = make_optimizer([model], config["optim"]["lr"], config["optim"]["backbone_lr"],
                                   config["optim"]["weight_decay"], device)
        schedule = config["schedule"]
        scheduler = make_scheduler(optimizer, schedule["kind"], train["epochs"], schedule["step_size"],
                                   schedule["gamma"])
        scaler = make_grad_scaler(device, train["amp"])
        run.log(f"classifier: {config['model']['backbone']} ({config['model']['pretrained']} weights), "
                f"{count_parameters(model) / 1e6:.2f} M parameters; "
                f"{len(datasets['train'])} training, {len(splits['grading']['validation'])} validation and "
                f"{len(datasets['test'])} test images at "
                f"{'x'.join(map(str, config['data']['image_size']))}; test majority-class accuracy "
                f"RG {majority['rg']:.3f}, MER {majority['mer']:.3f}")

        evaluate_epoch, eval_split, test = evaluation_plan(  # under "grading", as the multi-task model's
            train, lambda split: {"grading": evaluate(model, loaders[split], device, train["amp"])},
            "validation" in loaders)
        plan = EpochPlan(
            train=lambda epoch: train_one_epoch(wrapped, criterion, optimizer, loaders["train"], epoch, device,
                                                train["amp"], scaler),
            evaluate=evaluate_epoch, split=eval_split, selection=make_selection(train, TASKS), test=test,
            loaders=[loaders["train"]],
            preview=PredictionPreview(model, predict_grades, [datasets.get("validation")], TASKS, device))
        history = fit(run, wrapped, optimizer, scheduler, plan, train["epochs"], scaler)
        tested = run.folder / TEST_METRICS_FILE
        if run.is_main and tested.is_file():
            results = json.loads(tested.read_text())
            chosen = results.get("best", results["last"])
            run.log(final_line(chosen["metrics"]["grading"], majority))
        return history


if __name__ == "__main__":
    run_main(main, lambda: parse_cli(CONFIG, demo_overrides=DEMO, description=__doc__))
