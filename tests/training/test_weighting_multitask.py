"""Loss weightings train the real multi-task model through the engine, one method per way a method reaches
it (REAL_MODEL_METHODS): a tiny model (ResNet18, 64x96, no pretrained weights) fits one fixed batch per
side, also under AMP (two-process DDP, every method: test_weighting_ddp.py).

One fixed batch (the synthetic tree's 10 grading and 4 segmentation training images, without
augmentation) keeps this cheap and still honest: the model starts from random weights, so the
task losses only fall and RG predictions only beat the majority class when the weighting's
gradients actually train the backbone and the heads.
"""
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from benchmarks.bench_weighting import RepeatedBatch
from codebase.data.image_datasets import GradingDataset, SegmentationDataset
from codebase.engine import MultiTaskLoss, MultiTaskTraining, TrainStep
from codebase.model import MultiTaskModel
from codebase.tasks import on_side
from codebase.training.optim import make_optimizer
from codebase.training.weighting import make_weighting

pytestmark = pytest.mark.slow  # trains a model, or runs two processes

SIZE = (64, 96)
TASK_SPECS = {"classification_rg": 5, "classification_mer": 3, "segmentation_ma": 1, "segmentation_he": 1,
              "segmentation_ex": 1, "segmentation_se": 1, "segmentation_od": 1}
GATES = {"sparsity": 0.01, "load_balance": 0.01}
# torchjd's methods all go through one adapter (codebase/training/weighting/torchjd_adapter.py), whose
# coefficients take the path of PCGrad's below (GradientWeighting.backward): these two (stateless,
# stateful) run the real model under two-process DDP, and every torchjd method fits the toy model
# (tests/training/weighting/test_every_method.py). Fitting the real model with MGDA as well cost the
# suite over a minute for a path PCGrad's fit takes.
TORCHJD_REPRESENTATIVES = ("mgda", "gradvac")
# The package's own methods that train the real model here: one per way a method reaches the engine
# (the weighted sum, learned loss weights in the optimizer, losses after the step, GradNorm's gradient
# norms, a Gram-matrix gradient method). DWA and RLW weigh the sum as fixed does, and CAGrad combines the
# Gram matrix as PCGrad does; every method trains, resumes and runs on each device on the toy model
# (tests/training/weighting/test_every_method.py) and runs under DDP (test_weighting_ddp.py).
REAL_MODEL_METHODS = ("fixed", "uncertainty", "famo", "gradnorm", "pcgrad")


def fixed_batches(root):
    """{"grading": ..., "segmentation": ...}: every training image of each side, unaugmented, as one batch."""
    grading = GradingDataset(root, "train", SIZE, train=False)
    segmentation = SegmentationDataset(root, "train", SIZE, train=False)
    return {"grading": default_collate([grading[i] for i in range(len(grading))]),
            "segmentation": default_collate([segmentation[i] for i in range(len(segmentation))])}


def tiny_training(method, seed=0):
    """(TrainStep, weighting, optimizer) of a tiny multi-task model with ``method``."""
    torch.manual_seed(seed)
    model = MultiTaskModel(TASK_SPECS, "resnet18", 2, pretrained="none", aspp_channels=32, decoder_channels=16,
                           head_hidden=32)
    criterion = MultiTaskLoss(model.tasks, {"classification": "ce"}, GATES)
    weighting = make_weighting(method, list(TASK_SPECS), {})
    optimizer = make_optimizer([model], 3e-3, 1e-3, 0.0, "cpu", undecayed=weighting.extra_parameters())
    return TrainStep(model, criterion), weighting, optimizer


def task_losses_and_rg_accuracy(step, batches, amp="off"):
    """Sum of the task losses (no gate terms) and RG accuracy on the fixed batches, without training.

    Train mode (batch statistics, as the steps saw them): after a few steps the BatchNorm running
    statistics are not yet those of the batch, so eval mode would measure them, not the fit.
    """
    grading, segmentation = batches["grading"], batches["segmentation"]
    targets = {"classification_rg": grading["rg"], "classification_mer": grading["mer"]}
    masks = {task.name: task.target_of({"masks": segmentation["masks"]})
             for task in on_side(step.model.tasks, "segmentation")}
    step.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        task_losses, _, _, _ = step(grading["image"], targets, segmentation["image"], masks, True)
        rg_logits = step.model(grading["image"], side="grading", dense=True)["logits"]["classification_rg"]
    accuracy = (rg_logits.argmax(dim=1) == grading["rg"]).float().mean().item()
    return sum(float(loss) for loss in task_losses.values()), accuracy


def train(step, weighting, optimizer, batches, steps, amp="off", scaler=None):
    """``steps`` engine steps on the fixed batches, two per epoch (so DWA's epoch-level weights move)."""
    streams = {side: RepeatedBatch(batch) for side, batch in batches.items()}
    training = MultiTaskTraining(step, weighting, optimizer, torch.device("cpu"), amp, scaler)
    logged = []
    for epoch in range(1, steps // 2 + 1):
        logged.append(training.train_one_epoch(streams, epoch, 2, dense=True)["task_weights"])
    return logged


# Methods whose weights sum to the number of tasks exactly (uncertainty's exp(-s_t), PCGrad's
# projected and CAGrad's conflict-averse coefficients are on the same scale but not normalised).
NORMALISED = ("fixed", "dwa", "rlw", "famo", "gradnorm")


def majority_share(labels):
    return torch.bincount(labels).max().item() / len(labels)


@pytest.fixture(scope="module")
def batches(synthetic_root):
    return fixed_batches(synthetic_root)


def cpu_has_native_bf16():
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere torch emulates it,
    tens of times slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


BF16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="the CPU has no native bfloat16 (AVX512-BF16 or AMX)")


def fit_and_check(method, amp, batches):
    """Train the tiny model with ``method`` on the fixed batches; the task losses fall, RG beats the
    majority class, every task's weight is logged (summing to the number of tasks where normalised)."""
    step, weighting, optimizer = tiny_training(method)
    before, _ = task_losses_and_rg_accuracy(step, batches, amp)
    logged = train(step, weighting, optimizer, batches, 16, amp)
    after, rg_accuracy = task_losses_and_rg_accuracy(step, batches, amp)
    assert after < 0.75 * before, (method, before, after)
    assert rg_accuracy > majority_share(batches["grading"]["rg"]), (method, rg_accuracy)
    assert all(set(weights) == set(TASK_SPECS) for weights in logged)
    if method in NORMALISED:
        assert sum(logged[-1].values()) == pytest.approx(len(TASK_SPECS), rel=1e-4)


@pytest.mark.parametrize("method,amp", [(method, "off") for method in REAL_MODEL_METHODS]
                         + [pytest.param("uncertainty", "bf16", marks=BF16), pytest.param("cagrad", "bf16", marks=BF16)])
def test_weightings_fit_the_multitask_model_on_a_fixed_batch(method, amp, batches):
    """The package's methods of REAL_MODEL_METHODS train the real model; bf16 autocast, the CPU's AMP (no GradScaler), for one loss method
    and one gradient method where the CPU has bf16."""
    fit_and_check(method, amp, batches)
