"""What a trained run costs per image at one size: parameters, forward FLOPs, latency (codebase.evaluation.cost)."""
import itertools

import torch

from codebase.data.image_datasets import SegmentationDataset
from codebase.evaluation.cost import count_parameters, forward_flops, median_seconds
from codebase.runtime.device import autocast
from inference.runs import load_run


@torch.no_grad()
def run_cost(folder, root, size, device, images=2, repeats=5):
    """{"parameters", "flops" (mean over the first `images` test segmentation images), "dense_flops" (the
    same with every expert run on every image; None for a run without routing), "latency_s" (median of
    `repeats` timed forwards after warm-up)}, batch 1, every task the run has, top-p routing for the
    multi-task model as it is used."""
    run = load_run(folder, device)
    dataset = SegmentationDataset(root, "test", size)
    inputs = [dataset[i]["image"].unsqueeze(0).to(device) for i in range(min(images, len(dataset)))]  # [1, 3, H, W]
    amp = run.config["train"]["amp"]

    def forward(image, dense=False):
        with autocast(device, amp):
            run.predict(image, dense=dense)

    flops = [forward_flops(run.model, lambda image=image: forward(image))["total"] for image in inputs]
    dense = None
    if run.kind == "multitask":  # every expert on every image: what top-p routing saves is measured against it
        dense = [forward_flops(run.model, lambda image=image: forward(image, dense=True))["total"] for image in inputs]
    images_in_turn = itertools.cycle(inputs)
    latency = median_seconds(lambda: forward(next(images_in_turn)), device, repeats=repeats)
    return {"parameters": count_parameters(run.model), "flops": sum(flops) / len(flops),
            "dense_flops": None if dense is None else sum(dense) / len(dense), "latency_s": latency}
