"""Experiment grids: named sets of configurations trained under one budget and compared.

A grid maps configuration names to a train script and its ``--set`` overrides, names the
reference configuration that every other one is compared against, and fixes the budget all
configurations share (`Budget`). Add a grid with one entry in GRIDS.
"""
from dataclasses import dataclass, field

from codebase.training.weighting import installed_weightings

CLASSIFIER, SEGMENTATION, MULTITASK = "train_classifier.py", "train_segmentation.py", "train_mlt_model.py"

# Expert layouts named by what they are, not by the script's default, which the experts grid chooses
# on validation and may move: one expert per task (hard parameter sharing), and routed experts
# with no always-on shared expert beside them (the layout the moe grid and the experts grid's
# variants were measured with).
# Settings the grids' runs were trained with before a default of train_mlt_model.py changed: naming them keeps
# those runs what they were (experiments/runner.py refuses a finished run its script would now train otherwise).
HIGH_GATES = ("routing.gate_input=high",)  # the default until the experts grid chose "low" (docs/results.md)
ONE_EXPERT = ("model.num_experts=1", "model.shared_experts=0", *HIGH_GATES)  # (one expert's gate decides nothing)
NO_SHARED_EXPERT = ("model.shared_experts=0",)
ROUTED_ONLY = (*NO_SHARED_EXPERT, *HIGH_GATES)  # the routed experts alone, gates on high-level features


@dataclass(frozen=True)
class Budget:
    """What every configuration of a grid gets, whatever its script's own recipe says.

    Each run trains ``optimizer_steps`` steps of ``batch_size`` images per side (the multi-task
    model's step draws one grading and one segmentation batch), on images resized to
    ``image_size`` (height, width), and is evaluated at that size. `experiments.budget` turns
    this into each script's epochs and iterations.
    """

    image_size: tuple[int, int]
    batch_size: int
    optimizer_steps: int
    validation: float | int = 0.2  # data.validation of every run: the carved training split is what the steps count


@dataclass(frozen=True)
class Configuration:
    script: str                      # train script at the repository root
    overrides: tuple[str, ...] = ()  # "key=value", as after --set
    # Sparse upcycling (model.init_from): the configuration, listed earlier in the grid, whose run with the
    # same seed this one's experts start from. Its steps and this one's add up to the budget's, so the
    # upcycled model is compared with training from scratch at equal total optimizer steps.
    upcycle_from: str | None = None
    optimizer_steps: int | None = None  # this configuration's own steps (None: the budget's)


@dataclass(frozen=True)
class Grid:
    configurations: dict[str, Configuration]
    reference: str                   # the configuration every other one is compared against
    budget: Budget
    demo: bool = True                # start from each script's --demo recipe
    data_root: str = "data/synthetic"  # default --data-root (a synthetic tree is generated there if absent)
    description: str = ""
    overrides: tuple[str, ...] = field(default=())  # "key=value" applied to every configuration
    # External datasets every run is also evaluated on, (format, path), beside any --external; in a demo
    # grid a missing one is written as a synthetic tree (codebase.data.synthetic_formats.ensure_tree).
    external: tuple[tuple[str, str], ...] = field(default=())
    external_count: int = 60  # images per synthetic external tree (per split where a format has splits)


# The demo's size and batch (train_mlt_model.py DEMO: 160 steps of batch 8 at 128x192), with 192 steps: the
# nearest whole number of epochs of both sides on the demo tree (128 grading and 24 segmentation training
# images after the split: 16 and 3 steps per epoch), 1.2x the demo's steps.
DEMO_SCALE = Budget(image_size=(128, 192), batch_size=8, optimizer_steps=192)


MOE = Grid(
    description="Mixture-of-Experts ablation: single-task baselines, 1 expert, 3 routed experts (no shared expert) "
                "dense, top-p with the default routing, top-p without the routing balance (no balanced-assignment "
                "loss, no selection bias), and top-p with the earlier weak balance (balanced-assignment loss 0.1 "
                "with the gates' gradients reaching the backbone, no selection bias).",
    configurations={
        "classifier": Configuration(CLASSIFIER),
        "deeplabv3plus": Configuration(SEGMENTATION),
        "mlt_1_expert": Configuration(MULTITASK, ONE_EXPERT),
        # Dense throughout: trained with every expert (warm-up over all epochs) and evaluated with
        # top_p=1, which keeps every expert whose weight is above float32 underflow.
        "mlt_3_experts_dense": Configuration(MULTITASK, ("model.num_experts=3", *ROUTED_ONLY,
                                                         "routing.warmup_fraction=1.0", "routing.top_p=1.0")),
        "mlt_3_experts_top_p": Configuration(MULTITASK, ("model.num_experts=3", *ROUTED_ONLY)),
        "mlt_3_experts_top_p_no_balance": Configuration(MULTITASK, ("model.num_experts=3", *ROUTED_ONLY,
                                                                    "loss.gate_balanced_assignment=0",
                                                                    "routing.balance_rate=0")),
        # The routing this project had before: a tenth of the balanced-assignment loss, whose gradient
        # (like every gate loss's) reached the backbone, and no selection bias.
        "mlt_3_experts_top_p_weak_balance": Configuration(MULTITASK, ("model.num_experts=3", *ROUTED_ONLY,
                                                                      "loss.gate_balanced_assignment=0.1",
                                                                      "routing.balance_rate=0",
                                                                      "routing.detach_gate_input=false")),
    },
    reference="mlt_3_experts_top_p",
    # The synthetic demo tree has 160 grading and 30 segmentation training images, 128 and 24 after
    # the 20 % validation split: batch 8 is a whole number of batches of both (16 and 3 per epoch),
    # and 96 steps a whole number of epochs of both (6 and 32): 0.6x the demo's 160 steps, so that
    # the 21 runs fit in about an hour of two CPU cores.
    budget=Budget(image_size=(128, 192), batch_size=8, optimizer_steps=96),
)

SMOKE = Grid(
    description="Two tiny configurations for tests of the runner.",
    configurations={
        "classifier": Configuration(CLASSIFIER),
        "mlt_2_experts": Configuration(MULTITASK, ("model.num_experts=2", "model.aspp_channels=32",
                                                   "model.decoder_channels=32", "model.head_hidden=32")),
    },
    reference="classifier",
    budget=Budget(image_size=(64, 96), batch_size=4, optimizer_steps=2, validation=0),  # 1 epoch of 10 grading images
    # (too few images for a validation split: the runs keep their last weights)
    overrides=("model.backbone=resnet18", "model.pretrained=none", "run.plots=false"),
)

# every registered method this environment can run (Nash-MTL only where its optional cvxpy is installed)
WEIGHTING_METHODS = ("fixed",) + tuple(method for method in installed_weightings() if method != "fixed")

WEIGHTING = Grid(
    description="Loss weightings of the multi-task model (docs/multitask_model.md): the equal-weight sum "
                f"(fixed, the reference) against {', '.join(WEIGHTING_METHODS[1:])}, each with its default "
                "settings, at the experts grid's budget, on its shared-expert model (gates on high-level features).",
    configurations={method: Configuration(MULTITASK, (f"loss.weighting={method}",)) for method in WEIGHTING_METHODS},
    reference="fixed",
    overrides=HIGH_GATES,  # the default routing when the grid was run; its runs keep it
    # The generalization and experts grids' budget, so that the methods are ranked on tasks the model
    # learns (at 64x96 and 48 steps no method taught grading anything). A gradient method's step costs
    # about 4x fixed's (benchmarks/bench_weighting.py): on two CPU cores one seed of every method is
    # some six hours, a GPU's work (`--configs` runs a few methods and the reference).
    budget=DEMO_SCALE,
)

MOE_GPU = Grid(
    description="The moe grid at a GPU budget (benchmarks/gpu_check.py runs it when time is left): "
                "2.8x the side length, 2x the steps.",
    configurations=MOE.configurations,
    reference=MOE.reference,
    # On the synthetic demo tree (128 grading, 24 segmentation training images after the split)
    # batch 8 is 16 and 3 steps per epoch: 192 steps are 12 and 64 epochs.
    budget=Budget(image_size=(356, 536), batch_size=8, optimizer_steps=192),
)

# The default synthetic tree's cameras (idrid, ddr, notched) against a camera held out of it and the
# external formats' stand-ins, each drawn by a camera of its own (codebase/data/synthetic/cameras.py).
SYNTHETIC_EXTERNAL = (("idrid", "data/synthetic_heldout"), ("aptos", "data/synthetic_aptos"),
                      ("eyepacs", "data/synthetic_eyepacs"), ("messidor2", "data/synthetic_messidor2"),
                      ("ddr", "data/synthetic_ddr"), ("fgadr", "data/synthetic_fgadr"))

GENERALIZATION = Grid(
    description="Generalization: the classifier, DeepLabV3+, the multi-task model with 1 expert (the reference) and "
                "the default multi-task model, trained on the default synthetic cameras and evaluated in domain, on "
                "an IDRiD-layout tree from a held-out camera and on each external format's synthetic tree.",
    configurations={"classifier": Configuration(CLASSIFIER), "deeplabv3plus": Configuration(SEGMENTATION),
                    "mlt_1_expert": Configuration(MULTITASK, ONE_EXPERT),
                    "mlt_default": Configuration(MULTITASK)},
    reference="mlt_1_expert",
    budget=DEMO_SCALE,
    external=SYNTHETIC_EXTERNAL,
)

EXPERTS = Grid(
    description="What the experts buy, in domain and out of domain: one expert (hard parameter sharing, the "
                "reference) against three routed experts (gates on high-level features) and the variants of "
                "docs/multitask_model.md: an always-on shared expert beside the routed ones, alone, with gates on "
                "low-level features (the default, chosen on this grid's validation split) and with region routing; "
                "and, each changing one thing of the routed experts, one pool of experts per side shared by its "
                "tasks' gates, region routing of the lesions, gates reading low-level or both features, the cosine "
                "router, and sparse upcycling (the routed experts started from a 1-expert run of half the steps, "
                "trained for the other half: equal total steps).",
    configurations={"mlt_1_expert": Configuration(MULTITASK, ONE_EXPERT),
                    "mlt_routed": Configuration(MULTITASK, ROUTED_ONLY),
                    "mlt_shared_expert": Configuration(MULTITASK, ("model.shared_experts=1", *HIGH_GATES)),
                    "mlt_shared_pool": Configuration(MULTITASK, (*ROUTED_ONLY, "model.expert_pool=shared")),
                    "mlt_region": Configuration(MULTITASK, (*ROUTED_ONLY, "routing.granularity=region")),
                    "mlt_gate_low": Configuration(MULTITASK, (*NO_SHARED_EXPERT, "routing.gate_input=low")),
                    "mlt_gate_both": Configuration(MULTITASK, (*NO_SHARED_EXPERT, "routing.gate_input=both")),
                    "mlt_cosine": Configuration(MULTITASK, (*ROUTED_ONLY, "routing.router=cosine")),
                    # the shared expert together with each of the two variants whose held-out-camera gap was
                    # the smallest at 3 seeds (docs/results.md); the first is train_mlt_model.py's default
                    "mlt_shared_gate_low": Configuration(MULTITASK, ("model.shared_experts=1",
                                                                     "routing.gate_input=low")),
                    "mlt_shared_region": Configuration(MULTITASK, ("model.shared_experts=1", *HIGH_GATES,
                                                                   "routing.granularity=region")),
                    # sparse upcycling at equal total steps: 96 steps of one expert, then three routed
                    # experts started from it for the other 96
                    "mlt_1_expert_96_steps": Configuration(MULTITASK, ONE_EXPERT, optimizer_steps=96),
                    "mlt_upcycled": Configuration(MULTITASK, ROUTED_ONLY, upcycle_from="mlt_1_expert_96_steps",
                                                  optimizer_steps=96)},
    reference="mlt_1_expert",
    budget=DEMO_SCALE,  # 192 steps of batch 8 at 128x192; run it with --seeds 5
    external=SYNTHETIC_EXTERNAL,
)

GRIDS = {"generalization": GENERALIZATION, "experts": EXPERTS, "moe": MOE, "moe_gpu": MOE_GPU, "smoke": SMOKE, "weighting": WEIGHTING}
