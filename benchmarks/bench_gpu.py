"""GPU training path: throughput, peak memory and MFU of the multi-task model and DeepLabV3+.

One command prints the whole table (run it on the GPU machine):

    python benchmarks/bench_gpu.py                     # reference configuration, cuda
    python benchmarks/bench_gpu.py --smoke --device cpu   # tiny, seconds; what CI runs

Multi-task model at the reference configuration: ResNet50, 3 experts, 7 tasks, 712x1072, one
grading and one segmentation batch of 9 per optimizer step (18 images). Rows:
- plain fp32: fp32, contiguous tensors, experts one after another (the form this project replaces);
- tuned dense: bf16 autocast, channels_last, cudnn.benchmark, fused AdamW, grouped experts;
- tuned top-p: as tuned dense, each image routed to one expert per task (the state after warm-up);
- tuned single expert: one expert per task (the ceiling sparse routing approaches).
MFU = 3 x forward FLOPs (torch.utils.flop_counter) per second / bf16 matmul peak measured here.
Then inference at batch 1 (top-p) and DeepLabV3+ (OS 8, 1024x1024 crops, batch 12).
"""
import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import TASKS, one_expert_router, print_table  # noqa: E402
from codebase.engine import MultiTaskLoss, TrainStep  # noqa: E402
from codebase.evaluation.cost import (  # noqa: E402
    forward_flops,
    machine,  # noqa: E402
    median_seconds,
    synchronize,
)
from codebase.model import MultiTaskModel  # noqa: E402
from codebase.training.losses import SegmentationLoss  # noqa: E402
from codebase.training.optim import make_optimizer  # noqa: E402
from segmentation.model import DeepLabV3Plus  # noqa: E402


def matmul_peak(device, dtype, size=8192, repeats=10):
    """Achieved FLOP/s of a large square matrix product: the peak MFU is measured against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, repeats, 3)
    return 2 * size**3 / seconds


def autocast_for(device, tuned):
    if tuned and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def multitask_row(label, device, size, batch, backbone, experts, tuned, top_p, repeats, peak):
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = tuned
    model = MultiTaskModel(TASKS, backbone, experts, pretrained="none").to(device)
    for bank in model.experts.values():
        bank.grouped = tuned
    if top_p:
        one_expert_router(model)
    memory_format = torch.channels_last if tuned else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    criterion = MultiTaskLoss(model.tasks, gate_weights={"sparsity": 0.01, "load_balance": 0.01}).to(device)
    step = TrainStep(model, criterion)
    optimizer = make_optimizer([model], 3e-4, 3e-5, 1e-4, device if tuned else "cpu")
    grading = torch.randn(batch, 3, *size, device=device).to(memory_format=memory_format)
    segmentation = torch.randn(batch, 3, *size, device=device).to(memory_format=memory_format)
    labels = {"classification_rg": torch.randint(0, 5, (batch,), device=device),
              "classification_mer": torch.randint(0, 3, (batch,), device=device)}
    masks = {t: (torch.rand(batch, 1, *size, device=device) > 0.98).to(torch.uint8) for t in model.segmentation_tasks}
    dense = not top_p

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, tuned):
            task_losses, gate, _, _ = step(grading, labels, segmentation, masks, dense)
        (sum(task_losses.values()) + gate).backward()
        optimizer.step()

    model.train()
    seconds = median_seconds(train_step, device, repeats, 3)
    peak_memory = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        train_step()
        synchronize(device)
        peak_memory = torch.cuda.max_memory_allocated(device) / 2**30
    flops = forward_flops(model, lambda: (model(grading, side="grading", dense=dense),
                                          model(segmentation, side="segmentation", dense=dense)))["total"]
    images_per_second = 2 * batch / seconds
    mfu = 3 * flops / seconds / peak if peak else None
    return [label, f"{images_per_second:.1f}", f"{seconds * 1e3:.0f}",
            f"{peak_memory:.1f}" if peak_memory is not None else "n/a", f"{100 * mfu:.1f}%" if mfu else "n/a"]


def inference_latency(device, size, backbone, experts, repeats):
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = MultiTaskModel(TASKS, backbone, experts, pretrained="none").to(device).eval()
    one_expert_router(model)
    model = model.to(memory_format=torch.channels_last)
    image = torch.randn(1, 3, *size, device=device).to(memory_format=torch.channels_last)
    with torch.no_grad(), autocast_for(device, True):
        return {dense: median_seconds(lambda: model(image, dense=dense), device, repeats, 3) for dense in (True, False)}


def deeplab_rows(device, crop, batch, backbone, repeats):
    rows = []
    for label, tuned in (("plain fp32", False), ("tuned (bf16, channels_last, fused AdamW)", True)):
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = tuned
        memory_format = torch.channels_last if tuned else torch.contiguous_format
        model = DeepLabV3Plus(backbone, 8).to(device).to(memory_format=memory_format).train()
        optimizer = make_optimizer([model], 3e-4, 3e-5, 1e-4, device if tuned else "cpu")
        criterion = SegmentationLoss()
        images = torch.randn(batch, 3, *crop, device=device).to(memory_format=memory_format)
        masks = (torch.rand(batch, 5, *crop, device=device) > 0.98).to(torch.uint8)

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            with autocast_for(device, tuned):
                loss, _ = criterion(model(images), masks)
            loss.backward()
            optimizer.step()
        seconds = median_seconds(train_step, device, repeats, 3)
        rows.append([label, f"{batch / seconds:.1f}", f"{seconds * 1e3:.0f}"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backbone, size, batch, crop, seg_batch = "resnet50", (712, 1072), 9, (1024, 1024), 12
    if args.smoke:
        backbone, size, batch, crop, seg_batch, args.repeats = "resnet18", (64, 96), 2, (64, 64), 2, 1
    peak = matmul_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                       size=8192 if device.type == "cuda" else 512)
    print(f"Machine: {machine(device)}; measured matmul peak {peak / 1e12:.1f} TFLOP/s "
          f"({'bf16' if device.type == 'cuda' else 'fp32'})")
    rows = [multitask_row("plain fp32, dense", device, size, batch, backbone, 3, False, False, args.repeats, peak),
            multitask_row("tuned, dense (warm-up)", device, size, batch, backbone, 3, True, False, args.repeats, peak),
            multitask_row("tuned, top-p (1 expert/task)", device, size, batch, backbone, 3, True, True, args.repeats,
                          peak),
            multitask_row("tuned, single expert per task", device, size, batch, backbone, 1, True, False,
                          args.repeats, peak)]
    print_table(f"Multi-task training, {backbone}, 7 tasks, {size[0]}x{size[1]}, {batch}+{batch} images per step "
                "(reference on an H200: 45.6 img/s as shipped, 75.6-77.1 tuned, 124 single expert; "
                "targets >= 91 dense, >= 137 top-p, <= 31.3 / 20 GB)",
                ["configuration", "images/s", "ms/step", "peak GB", "MFU"], rows)
    latency = inference_latency(device, size, backbone, 3, args.repeats)
    print_table(f"Inference at batch 1, {size[0]}x{size[1]} (target top-p <= 9 ms on an H200)",
                ["routing", "ms/image"], [["dense", f"{latency[True] * 1e3:.2f}"],
                                          ["top-p", f"{latency[False] * 1e3:.2f}"]])
    print_table(f"DeepLabV3+ {backbone} OS 8, {crop[0]}x{crop[1]} crops, batch {seg_batch} "
                "(reference on an H200: 25.1 img/s as shipped, 58.4 tuned; target >= 60)",
                ["configuration", "images/s", "ms/step"], deeplab_rows(device, crop, seg_batch, backbone, args.repeats))


if __name__ == "__main__":
    main()
