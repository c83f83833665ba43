"""Training the multi-task model with region routing (experts per grid cell) end to end."""
import json

import pytest
import torch
from test_engine import tiny_config

import train_mlt_model
from codebase.data.synthetic import generate

pytestmark = pytest.mark.slow  # trains a model


def test_region_routing_trains_and_learns_the_optic_disc(tmp_path_factory):
    """granularity=region on a small synthetic tree: the optic disc is segmented (Dice >= 0.5 on the
    validation split), routing is recorded per cell, and loss-free balancing moved the region gates' bias."""
    root = generate(tmp_path_factory.mktemp("regions") / "data", seed=1, size=(288, 192), seg_train=16,
                    seg_test=6, grade_train=48, grade_test=24)
    config = tiny_config(root, tmp_path_factory.mktemp("region_runs"), "data.segmentation_size=64,96",
                         "train.epochs=8", "train.iterations=10", "optim.lr=1e-3", "train.batch_size=8",
                         "train.eval_batch_size=16", "train.evaluate_every=8", "model.aspp_channels=64",
                         "routing.granularity=region", "routing.region_grid=2,3", "routing.top_p=0.6")
    history = train_mlt_model.main(config)
    validation = history[-1]["validation"]
    assert validation["segmentation"]["OD"]["dice"] >= 0.5, validation["segmentation"]["OD"]
    assert 1.0 <= validation["routing"]["segmentation_od"]["experts_per_image"] <= 3.0
    folder = config["run"]["save_dir"] + "/mlt_demo"
    assert json.load(open(folder + "/config.json"))["routing"]["granularity"] == "region"
    state = torch.load(folder + "/model.pth", weights_only=True)
    assert state["gates.segmentation_od.selection_bias"].abs().max() > 0
