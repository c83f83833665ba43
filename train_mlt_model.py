"""Train the Mixture-of-Experts multi-task model: grading (RG, MER) and lesion segmentation at once.

    python train_mlt_model.py --demo                     # synthetic data, CPU, a few minutes
    python train_mlt_model.py --data-root data --device cuda
    python train_mlt_model.py --set model.num_experts=4 --set routing.top_p=0.9
    torchrun --nproc_per_node=4 train_mlt_model.py --data-root data

Each optimizer step draws one grading batch and one segmentation batch. Each task has routed
experts and one always-on shared expert (model.shared_experts). During warm-up every routed
expert runs on every image; after it, each image runs the fewest routed experts whose routing
weights reach routing.top_p. Writes saved/<run.name>/ (config.json, checkpoint.pth, model.pth,
history.json, train_log.txt, plots/).
"""
import torch

from codebase.config import (
    FIXES_THE_RUN,
    MAY_CHANGE,
    BOOLEAN,
    Rule,
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
from codebase.dataset import build_loaders
from codebase.engine import (
    MultiTaskLoss,
    MultiTaskTraining,
    TrainStep,
    evaluate,
    gate_weights,
)
from codebase.errors import run_main
from codebase.evaluation.expert_images import EXPERT_IMAGES_FIGURE, write_expert_images
from codebase.evaluation.fullres import FULLRES_EVAL, run_window
from codebase.evaluation.previews import PredictionPreview
from codebase.model import build_model, predict
from codebase.networks.expert_layout import POOLS
from codebase.networks.layers import ROUTERS
from codebase.networks.regions import GATE_INPUTS, GRANULARITIES
from codebase.runtime import distributed
from codebase.runtime.device import make_grad_scaler
from codebase.settings import COMMON_RESUME_RULES, COMMON_RULES, task_weights_rule
from codebase.tasks import parse_tasks
from codebase.training.loop import EpochPlan, fit
from codebase.training.losses import CLASSIFICATION_LOSSES
from codebase.training.optim import make_optimizer, make_scheduler
from codebase.training.run_folder import PLOTS_FOLDER, Run
from codebase.training.selection import evaluation_plan, make_selection
from codebase.training.upcycling import source_config, upcycle
from codebase.training.weighting import WEIGHTINGS, install_problem, weighting_from_config
from codebase.training.weighting import default_settings as weighting_defaults
from codebase.training.weighting import resume_rules as weighting_resume_rules
from codebase.training.weighting import setting_rules as weighting_setting_rules

CONFIG = {
    "kind": "multitask",                   # the model kind, recorded so a run folder can be rebuilt
    "seed": 0,
    "device": "auto",
    "run": {"name": "mlt_resnet50"},
    "data": {
        "root": "data",
        "grading_size": [712, 1072],       # (height, width) the grading images are resized to
        "segmentation_size": [712, 1072],  # (height, width) the segmentation images are resized to
        "crop_size": None,                 # optional random (height, width) crop of training segmentation images
        "cache_dir": None,                 # decoded-image cache; None: <data.root>/.cache
        "validation": 0.2,                 # carved from each training split by the seed: fraction, image count, or 0
        "num_workers": 2,
        "pin_memory": True,
        "persistent_workers": False,       # True: faster epochs; augmentations then differ after a resume
        "patches": patch_defaults(),       # lesion-aware crops at a working resolution for the segmentation side
                                           # (docs/full_resolution.md); enabled: training crops of
                                           # images kept at patches.working_size (None: native), validation and
                                           # test by sliding patches.crop_size windows over the working-size image
                                           # (segmentation_size and crop_size then unused); grading unchanged
    },
    "model": {
        "backbone": "resnet50",
        "pretrained": "imagenet",          # "imagenet", "none", or a path to a torchvision state dict
        "num_experts": 3,
        "shared_experts": 1,               # always-on experts per task (per pool) beside the routed ones, not gated;
                                           # 1: best on the experts grid's validation split (docs/results.md)
        "expert_pool": "task",             # "task": routed experts per task; "shared": one pool per side,
                                           # a gate per task
        "init_from": None,                 # a saved multi-task run folder to upcycle from (backbone, ASPP, expert 0
                                           # copied into every expert with noise; codebase/training/upcycling.py)
        "task_specs": {"classification_rg": 5, "classification_mer": 3, "segmentation_ma": 1,
                       "segmentation_he": 1, "segmentation_ex": 1, "segmentation_se": 1, "segmentation_od": 1},
        "aspp_channels": 256,
        "decoder_channels": 256,
        "head_hidden": 256,
    },
    "routing": {
        "top_p": 0.8,                      # after warm-up: fewest experts whose weights reach p
        "warmup_fraction": 0.5,            # share of the epochs with every expert running (dense)
        "noise": False,                    # noisy gating: learned Gaussian noise on the gate logits in training
        "balance_rate": 0.05,              # loss-free balancing: per-step move of each expert's selection bias
        "detach_gate_input": True,         # the gates read the pooled features detached: routing losses stay
                                           # out of the backbone
        "gate_input": "low",               # what the gates read, averaged: "low" (stride-4: colour, illumination,
                                           # blur; best on the experts grid's validation split with the shared
                                           # expert), "high" (stride-16) features, or "both" concatenated
        "granularity": "image",            # segmentation tasks: "image" (one choice per image) or "region"
                                           # (per cell of region_grid, per-pixel mixture; docs/multitask_model.md)
        "region_grid": [4, 6],             # [rows, columns] of the region grid over the high-level features
        "router": "linear",                # "linear" gate logits, or "cosine" (X-MoE: cosine to learned expert
                                           # embeddings over a learned, clamped temperature)
    },
    "loss": {
        "classification": "focal",         # "focal" or "ce"
        "focal_gamma": 2.0,
        "segmentation_alpha": 0.75,
        "segmentation_gamma": 4.0,
        "focal_weight": 1.0,
        "dice_weight": 1.0,
        "dice_on_absent": True,            # a lesion with no pixel in the batch adds its soft-Dice loss
                                           # (pushing its every pixel to 0); false: its false positives are
                                           # left to the focal term (patch training: most crops lack most lesions)
        "weighting": "fixed",              # a method of the codebase.training.weighting package, one module
                                           # each (docs/multitask_model.md); fixed: the weighted sum
        **weighting_defaults(),            # each method's settings, loss.<method>_<setting> (fixed's
                                           # task_weights: {task: weight}, unlisted tasks weigh 1)
        "gate_sparsity": 0.01,
        "gate_load_balance": 0.01,
        "gate_entropy": 0.0,
        "gate_switch_balance": 0.0,        # E * sum_e (share of images dispatched to e) * (mean weight of e)
        "gate_balanced_assignment": 1.0,   # cross-entropy to the batch's balanced choice of one expert per image
    },
    "optim": {"lr": 3e-4, "backbone_lr": 3e-5, "weight_decay": 1e-4},
    "schedule": {"kind": "step", "step_size": 30, "gamma": 0.2},
    "train": {
        "epochs": 100,
        "iterations": 10,                  # optimizer steps per epoch
        "batch_size": 9,                   # per process, for each of the two batches of a step
        "eval_batch_size": 4,
        "amp": "auto",                     # auto: bf16 (or fp16 + GradScaler) on CUDA, off on CPU
        "channels_last": True,             # NHWC activations (faster convolutions on GPUs)
        "compile": False,                  # torch.compile the backbone (minutes of compilation)
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
    "data.root": "data/synthetic",
    "data.grading_size": [128, 192],
    "data.segmentation_size": [128, 192],
    "data.num_workers": 0,
    "model.backbone": "resnet18",
    "model.pretrained": "none",
    "model.aspp_channels": 64,
    "model.decoder_channels": 32,
    "model.head_hidden": 64,
    "loss.classification": "ce",
    "optim.lr": 1e-3,
    "optim.backbone_lr": 5e-4,
    "schedule.kind": "cosine",
    "train.epochs": 16,
    "train.iterations": 10,
    "train.batch_size": 8,
    "train.eval_batch_size": 16,
    "train.channels_last": False,
    "train.evaluate_every": 4,
    "run.name": "mlt_demo",
}


RULES = {
    **COMMON_RULES,
    "kind": choice("multitask"),
    "data.grading_size": size_hw(32),
    "data.segmentation_size": size_hw(32),
    "data.crop_size": optional(size_hw(32)),
    "data.persistent_workers": BOOLEAN,
    "model.num_experts": integer(1),
    "model.shared_experts": integer(0),
    "model.expert_pool": choice(*POOLS),
    "model.init_from": optional(Rule(lambda path: isinstance(path, str) and bool(path), "a saved run folder")),
    "model.task_specs": Rule(lambda specs: isinstance(specs, dict) and bool(specs), "a dict {task name: outputs}"),
    "model.aspp_channels": integer(1),
    "model.decoder_channels": integer(1),
    "model.head_hidden": integer(1),
    "routing.top_p": number(0, 1, low_open=True),
    "routing.warmup_fraction": number(0, 1),
    "routing.noise": BOOLEAN,
    "routing.balance_rate": number(0),
    "routing.detach_gate_input": BOOLEAN,
    "routing.gate_input": choice(*GATE_INPUTS),
    "routing.granularity": choice(*GRANULARITIES),
    "routing.region_grid": Rule(lambda grid: size_hw(1, 64).check(grid), "[rows, columns], integers in [1, 64]"),
    "routing.router": choice(*ROUTERS),
    "loss.classification": choice(*CLASSIFICATION_LOSSES),
    "loss.focal_gamma": number(0),
    "loss.segmentation_alpha": number(0, 1),
    "loss.segmentation_gamma": number(0),
    "loss.focal_weight": number(0),
    "loss.dice_weight": number(0),
    "loss.dice_on_absent": BOOLEAN,
    "loss.weighting": choice(*WEIGHTINGS),
    **weighting_setting_rules(),
    "loss.gate_sparsity": number(0),
    "loss.gate_load_balance": number(0),
    "loss.gate_entropy": number(0),
    "loss.gate_switch_balance": number(0),
    "loss.gate_balanced_assignment": number(0),
    "train.iterations": integer(1),
    "train.channels_last": BOOLEAN,
    "train.compile": BOOLEAN,
    "train.evaluate_every": integer(1),
    **patch_setting_rules("data.patches"),
    "train.fullres_eval": choice(*FULLRES_EVAL),
}


# On --resume (codebase.config): the shared settings' rules, and this script's own.
RESUME_RULES = {
    **COMMON_RESUME_RULES,
    "data.persistent_workers": MAY_CHANGE,
    "routing": FIXES_THE_RUN,
    **weighting_resume_rules(),
    "train.channels_last": MAY_CHANGE,
    "train.compile": MAY_CHANGE,
    "train.fullres_eval": MAY_CHANGE,
}

def validate(config):
    """ConfigError naming the first setting that breaks its rule (RULES), a wrong task, an unknown
    task in loss.task_weights, a crop larger than the image, or region routing with a shared pool."""
    check_settings(config, RULES)
    weights = task_weights_rule(task.name for task in parse_tasks(config["model"]["task_specs"]))
    require(config, "loss.task_weights", weights.check, weights.expected)
    problem = install_problem(config["loss"]["weighting"])
    require(config, "loss.weighting", lambda name: problem is None, f"a method this environment can run ({problem})")
    size = config["data"]["segmentation_size"]
    require(config, "data.crop_size", lambda c: c is None or (c[0] <= size[0] and c[1] <= size[1]),
            f"None or [height, width] no larger than data.segmentation_size={size}")
    validate_patch_settings(config, "data.patches")
    pool = config["model"]["expert_pool"]
    require(config, "routing.granularity", lambda g: g == "image" or pool == "task",
            f"'image' with model.expert_pool={pool!r} (region routing needs per-task experts)")
    if config["model"]["init_from"] is not None:
        source_config(config)


def main(config):
    """Train as configured; returns the history (one dict per epoch)."""
    validate(config)
    with Run(config, RESUME_RULES) as run:
        data, train, device = config["data"], config["train"], run.device
        if config["run"]["demo"] and distributed.is_main_process():
            ensure_dataset(data["root"])
        distributed.barrier()
        splits = split_records(data["root"], data["validation"], config["seed"])
        run.save_splits(describe(splits))
        datasets, streams, eval_loaders = build_loaders(config, splits, device, distributed.rank(),
                                                        distributed.world_size())

        model = build_model(config)
        if config["model"]["init_from"] is not None and run.checkpoint is None:  # a resumed run has its weights
            run.log(upcycle(model, config))
        model = model.to(device)
        if train["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        if train["compile"]:
            model.backbone.compile()  # in place: parameter names, so checkpoints, stay the same
        loss_config = config["loss"]
        criterion = MultiTaskLoss(model.tasks, loss_config, gate_weights(loss_config))
        weighting = weighting_from_config(loss_config, list(model.task_specs)).to(device)
        if distributed.is_distributed():
            model.keep_skipped_experts_in_graph()
        step = distributed.wrap_model(TrainStep(model, criterion), device)
        optimizer = make_optimizer([model], config["optim"]["lr"], config["optim"]["backbone_lr"],
                                   config["optim"]["weight_decay"], device, undecayed=weighting.extra_parameters())
        schedule = config["schedule"]
        scheduler = make_scheduler(optimizer, schedule["kind"], train["epochs"], schedule["step_size"], schedule["gamma"])
        scaler = make_grad_scaler(device, train["amp"])
        warmup_epochs = round(config["routing"]["warmup_fraction"] * train["epochs"])
        run.log("images (train / validation / test): " + "; ".join(
            f"{side} {' / '.join(str(len(records)) for records in parts.values())}" for side, parts in splits.items()))
        run.log(f"multi-task model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
                f"{len(model.task_specs)} tasks, {model.num_experts} routed + {model.shared_count} shared experts "
                f"{'per task' if model.expert_pool == 'task' else 'in one pool per side'}; dense routing for the first "
                f"{warmup_epochs} epochs, then top-p with p={model.top_p}")

        training = MultiTaskTraining(step, weighting, optimizer, device, train["amp"], scaler, train["channels_last"],
                                     config["routing"]["balance_rate"])

        def train_epoch(epoch):
            return training.train_one_epoch(streams, epoch, train["iterations"], dense=epoch <= warmup_epochs)

        _, window, overlap = run_window(config)

        def evaluate_split(split, full_resolution):  # top-p routing, as the model will be used
            return evaluate(model, eval_loaders[split], device, train["amp"], split, window, overlap, full_resolution,
                            cache_masks=train["fullres_eval"] == "every")

        evaluate_epoch, eval_split, _ = evaluation_plan(
            train, lambda split: evaluate_split(split, train["fullres_eval"] == "every"),
            bool(eval_loaders["validation"]))

        def test():
            return evaluate_split("test", train["fullres_eval"] != "off")
        loaders = [loader for split in eval_loaders.values() for loader in split.values()]
        plan = EpochPlan(train=train_epoch, evaluate=evaluate_epoch, split=eval_split,
                         selection=make_selection(train, model.tasks), test=test, loaders=loaders,
                         preview=PredictionPreview(model, predict, [datasets[side].get("validation")
                                                                    for side in datasets], model.tasks, device))
        history = fit(run, model, optimizer, scheduler, plan, train["epochs"], scaler, {"weighting": weighting})
        if distributed.is_main_process() and config["run"]["plots"]:
            draw_expert_images(run, model, {side: split["test"] for side, split in datasets.items() if "test" in split},
                               device, train["amp"])
        return history


def draw_expert_images(run, model, datasets, device, amp):
    """plots/router_expert_images.png: the test images that weigh most for each expert (the last
    weights); a failure is only logged, as for the other plots."""
    try:
        path = write_expert_images(model, datasets, device, run.folder / PLOTS_FOLDER / EXPERT_IMAGES_FIGURE, amp=amp)
        run.log(f"the test images each expert takes: {path}")
    except Exception as error:  # a figure never costs the finished run
        run.log(f"warning: could not draw {EXPERT_IMAGES_FIGURE}: {error!r}")


if __name__ == "__main__":
    run_main(main, lambda: parse_cli(CONFIG, demo_overrides=DEMO, description=__doc__))
