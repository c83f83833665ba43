"""Train the DeepLabV3+ lesion segmentation baseline (MA, HE, EX, SE, OD; one sigmoid output each).

    python train_segmentation.py --demo                  # synthetic data, CPU, a few minutes
    python train_segmentation.py --data-root data --device cuda
    python train_segmentation.py --set model.output_stride=16 --set train.batch_size=8
    torchrun --nproc_per_node=4 train_segmentation.py --data-root data

Defaults are the reference experiment: ResNet50 (ImageNet weights) at output stride 8, images
resized to 1424x2144 and cropped at random to 1024x1024 for training, evaluated on the whole
resized test image; batch 12, 100 epochs, AdamW (3e-4, backbone 3e-5, weight decay 1e-4), StepLR
60/0.1; loss = sigmoid focal (alpha 0.75, gamma 4) + soft Dice per lesion. Writes
saved/<run.name>/ (config.json, checkpoint.pth, model.pth, history.json, train_log.txt, plots/)
and prints the per-lesion test metrics at the end.
"""
import json

import torch

from codebase.config import (
    MAY_CHANGE,
    BOOLEAN,
    check_settings,
    choice,
    integer,
    number,
    optional,
    parse_cli,
    require,
    size_hw,
)
from codebase.data.patches import (
    patch_defaults,
    patch_setting_rules,
    validate_patch_settings,
)
from codebase.data.splits import describe, split_records
from codebase.data.synthetic import ensure_dataset
from codebase.errors import run_main
from codebase.evaluation.cost import count_parameters
from codebase.evaluation.fullres import FULLRES_EVAL, run_window
from codebase.evaluation.fullres import SUFFIX as FULLRES_SUFFIX
from codebase.evaluation.metrics import LESION_METRICS
from codebase.evaluation.previews import PredictionPreview
from codebase.evaluation.visualize import lesion_metrics_table
from codebase.networks.backbones import BACKBONES
from codebase.runtime import distributed
from codebase.runtime.device import make_grad_scaler
from codebase.settings import COMMON_RESUME_RULES, COMMON_RULES, task_weights_rule
from codebase.training.loop import EpochPlan, fit
from codebase.training.losses import SegmentationLoss
from codebase.training.optim import make_optimizer, make_scheduler
from codebase.training.run_folder import TEST_METRICS_FILE, Run
from codebase.training.selection import evaluation_plan, make_selection
from segmentation.dataset import build_loaders
from segmentation.engine import evaluate, train_one_epoch
from segmentation.model import TASKS, build_model
from segmentation.model import predict as predict_lesions

CONFIG = {
    "kind": "segmentation",                # the model kind, recorded so a run folder can be rebuilt
    "seed": 0,
    "device": "auto",
    "run": {"name": "deeplabv3plus_resnet50"},
    "data": {
        "root": "data",
        "image_size": [1424, 2144],        # (height, width) every image is resized to
        "crop_size": [1024, 1024],         # random (height, width) training crop; = image_size: whole image
        "cache_dir": None,                 # decoded-image cache; None: <data.root>/.cache
        "validation": 0.2,                 # carved from the training split by the seed: fraction, image count, or 0
        "num_workers": 4,
        "pin_memory": True,
        "patches": patch_defaults(),       # lesion-aware crops at a working resolution
                                           # (docs/full_resolution.md); enabled: training crops of images kept at
                                           # patches.working_size (None: native), validation and test by sliding
                                           # patches.crop_size windows over the working-size image (image_size
                                           # and crop_size above then unused)
    },
    "model": {                             # the arguments of segmentation.model.DeepLabV3Plus
        "backbone": "resnet50",
        "output_stride": 8,
        "pretrained": "imagenet",          # "imagenet", "none", or a path to a torchvision state dict
        "aspp_channels": 256,              # ASPP output width
        "decoder_channels": 256,           # decoder refinement width
        "separable": False,                # depthwise-separable 3x3 convs in ASPP and decoder
    },
    "loss": {
        "segmentation_alpha": 0.75,        # sigmoid focal loss: weight of positive pixels
        "segmentation_gamma": 4.0,                     # sigmoid focal loss: focusing exponent
        "focal_weight": 1.0,
        "dice_weight": 1.0,
        "task_weights": {},                # {task: weight}, e.g. {"segmentation_ma": 2}; unlisted tasks weigh 1
        "dice_on_absent": True,            # a lesion with no pixel in the batch adds its soft-Dice loss
                                           # (pushing its every pixel to 0); false: its false positives are
                                           # left to the focal term (patch training: most crops lack most lesions)
    },
    "optim": {"lr": 3e-4, "backbone_lr": 3e-5, "weight_decay": 1e-4},
    "schedule": {"kind": "step", "step_size": 60, "gamma": 0.1},
    "train": {
        "epochs": 100,
        "batch_size": 12,                  # per process
        "eval_batch_size": 2,
        "amp": "auto",                     # auto: bf16 (or fp16 + GradScaler) on CUDA, off on CPU
        "channels_last": False,
        "threshold": 0.5,                  # probability above which a pixel counts as lesion (IoU, Dice, ...)
        "evaluate_every": 1,               # epochs between evaluations (and the last epoch)
        "evaluate_on": "validation",       # evaluations during training: "validation", or "test" (explicit; labelled test)
        "monitor": "mean_primary",         # best.pth: mean over tasks of kappa (grading) / AUPR (lesions), or a metric path
        "patience": 0,                     # early stopping after this many evaluations without a better score; 0: off
        "fullres_eval": "final",           # lesion metrics against the original-size masks ("*_fullres", beside the
                                           # working-resolution ones): "off", "final" (the test split at the end),
                                           # "every" (every evaluation too)
    },
}

DEMO = {
    "run.name": "segmentation_demo",
    "data.root": "data/synthetic",
    "data.image_size": [192, 288],
    "data.crop_size": [160, 240],
    "data.num_workers": 0,
    "model.backbone": "resnet18",
    "model.output_stride": 16,
    "model.pretrained": "none",
    "model.aspp_channels": 64,
    "model.decoder_channels": 64,
    "optim.lr": 2e-3,
    "optim.backbone_lr": 1e-3,
    "schedule.kind": "cosine",
    "train.epochs": 8,
    "train.batch_size": 4,
    "train.eval_batch_size": 12,
}


RULES = {
    **COMMON_RULES,
    "kind": choice("segmentation"),
    "data.image_size": size_hw(32),
    "data.crop_size": optional(size_hw(32)),
    "model.output_stride": choice(8, 16),
    "model.aspp_channels": integer(1),
    "model.decoder_channels": integer(1),
    "model.separable": BOOLEAN,
    "loss.segmentation_alpha": number(0, 1),
    "loss.segmentation_gamma": number(0),
    "loss.focal_weight": number(0),
    "loss.dice_weight": number(0),
    "loss.dice_on_absent": BOOLEAN,
    "loss.task_weights": task_weights_rule(task.name for task in TASKS),
    "train.channels_last": BOOLEAN,
    "train.threshold": number(0, 1),
    "train.evaluate_every": integer(1),
    **patch_setting_rules("data.patches"),
    "train.fullres_eval": choice(*FULLRES_EVAL),
}


# On --resume (codebase.config): the shared settings' rules, and this script's own.
RESUME_RULES = {
    **COMMON_RESUME_RULES,
    "train.channels_last": MAY_CHANGE,
    "train.fullres_eval": MAY_CHANGE,
}

def validate(config):
    """ConfigError naming the first setting that breaks its rule (RULES), or a crop larger than the image."""
    check_settings(config, RULES)
    backbone = BACKBONES[config["model"]["backbone"]]
    require(config, "model.output_stride", backbone.output_strides,
            f"an output stride {config['model']['backbone']} supports: {backbone.output_strides}")
    image_size = config["data"]["image_size"]
    require(config, "data.crop_size", lambda c: c is None or (c[0] <= image_size[0] and c[1] <= image_size[1]),
            f"None or [height, width] no larger than data.image_size={image_size}")
    validate_patch_settings(config, "data.patches")

def main(config):
    """Train (or resume) the run the config describes; returns the history."""
    validate(config)
    with Run(config, RESUME_RULES) as run:
        data, train, device = config["data"], config["train"], run.device
        if config["run"]["demo"] and distributed.is_main_process():
            ensure_dataset(data["root"])
        distributed.barrier()
        splits = split_records(data["root"], data["validation"], config["seed"], ("segmentation",))
        run.save_splits(describe(splits))
        loaders = build_loaders(config, splits["segmentation"], device)

        model = build_model(config).to(device)
        if train["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        run.log(f"DeepLabV3+ {config['model']['backbone']} OS {config['model']['output_stride']}: "
                f"{count_parameters(model) / 1e6:.2f} M parameters; {len(loaders['train'].dataset)} training, "
                f"{len(splits['segmentation']['validation'])} validation, {len(loaders['test'].dataset)} test images")
        loss = config["loss"]
        criterion = SegmentationLoss(loss["segmentation_alpha"], loss["segmentation_gamma"], loss["focal_weight"], loss["dice_weight"],
                                     {task.key: loss["task_weights"].get(task.name, 1.0) for task in TASKS},
                                     dice_on_absent=loss["dice_on_absent"]).to(device)
        wrapped = distributed.wrap_model(model, device)
        optim = config["optim"]
        optimizer = make_optimizer([model], optim["lr"], optim["backbone_lr"], optim["weight_decay"], device)
        schedule = config["schedule"]
        scheduler = make_scheduler(optimizer, schedule["kind"], train["epochs"], schedule["step_size"],
                                   schedule["gamma"])
        scaler = make_grad_scaler(device, train["amp"])

        def train_epoch(epoch):
            return train_one_epoch(wrapped, criterion, optimizer, loaders["train"], epoch, device, train["amp"],
                                   scaler, train["channels_last"])

        _, window, overlap = run_window(config)

        def evaluate_split(split, full_resolution):
            return {"segmentation": evaluate(model, loaders[split], device, train["amp"], train["threshold"],
                                             window=window, overlap=overlap, split=split,
                                             full_resolution=full_resolution,
                                             cache_masks=train["fullres_eval"] == "every")}

        evaluate_epoch, eval_split, _ = evaluation_plan(
            train, lambda split: evaluate_split(split, train["fullres_eval"] == "every"), "validation" in loaders)

        def test():
            return evaluate_split("test", train["fullres_eval"] != "off")
        plan = EpochPlan(train=train_epoch, evaluate=evaluate_epoch, split=eval_split,
                         selection=make_selection(train, TASKS), test=test, loaders=loaders.values(),
                         preview=PredictionPreview(model, predict_lesions, [
                             loaders["validation"].dataset if "validation" in loaders else None], TASKS, device,
                             threshold=train["threshold"]))
        history = fit(run, wrapped, optimizer, scheduler, plan, train["epochs"], scaler)
        tested = run.folder / TEST_METRICS_FILE
        if run.is_main and tested.is_file():
            results = json.loads(tested.read_text())
            which = "best" if "best" in results else "last"
            metrics = results[which]["metrics"]["segmentation"]
            run.log(f"test metrics of the {which} weights (epoch {results[which]['epoch']}, threshold "
                    f"{train['threshold']}), {metrics['resolution']}:\n" + lesion_metrics_table(metrics))
            if "mean_aupr_fullres" in metrics:
                run.log("the same at the original resolution of the masks:\n" + lesion_metrics_table(
                    metrics, metrics=tuple(f"{name}{FULLRES_SUFFIX}" for name in LESION_METRICS)))
        return history


if __name__ == "__main__":
    run_main(main, lambda: parse_cli(CONFIG, demo_overrides=DEMO, description=__doc__))
