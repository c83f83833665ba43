"""Tiny runs of the three train scripts (resnet18, one epoch, 64-128 px) and how scripts are run in tests."""
import os
from pathlib import Path

import train_classifier
import train_mlt_model
import train_segmentation
from codebase.config import parse_cli

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
COMMON = ["train.epochs=1", "train.eval_batch_size=4", "run.plots=false"]
# Grading and segmentation at different sizes, so an image takes two forwards (one per side). routing.top_p
# is tiny, so top-p routing keeps exactly one expert per image and task (the fewest reaching p, at least
# one) where dense routing runs all three: top-p must cost fewer FLOPs than dense.
MULTITASK = ["data.grading_size=64,96", "data.segmentation_size=96,128", "model.aspp_channels=16",
             "model.decoder_channels=16", "model.head_hidden=16", "train.iterations=2", "train.batch_size=2",
             "routing.top_p=0.05"]
CLASSIFIER = ["data.image_size=64,96", "data.num_workers=0", "model.head_hidden=16", "train.batch_size=5"]
SEGMENTATION = ["data.image_size=64,96", "data.crop_size=64,96", "model.aspp_channels=16",
                "model.decoder_channels=16", "train.batch_size=2"]
TRAINERS = {"multitask": (train_mlt_model, MULTITASK), "classifier": (train_classifier, CLASSIFIER),
            "segmentation": (train_segmentation, SEGMENTATION)}


def train_tiny(script, sets, root, save_dir, name):
    """Train the script's demo config at a tiny size (resnet18, one epoch) into save_dir/name."""
    argv = ["--demo", "--device", "cpu", "--data-root", str(root), "--run-name", name,
            "--set", f"run.save_dir={save_dir}"]
    for assignment in COMMON + sets:
        argv += ["--set", assignment]
    script.main(parse_cli(script.CONFIG, argv, script.DEMO, validate=script.validate))
    return save_dir / name
