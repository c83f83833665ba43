"""GPU training path: throughput, peak memory and MFU of the multi-task model and DeepLabV3+.

One command prints the whole table (run it on the GPU machine; benchmarks/gpu_check.py runs it
with everything else worth measuring on a GPU and saves the tables as it goes):

    python benchmarks/bench_gpu.py                     # reference configuration, cuda
    python benchmarks/bench_gpu.py --compile           # also the compiled backbone against eager
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
import time
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

# The reference configuration, and the tiny one of --smoke.
REFERENCE = {"backbone": "resnet50", "size": (712, 1072), "batch": 9, "crop": (1024, 1024), "seg_batch": 12,
             "repeats": 10, "warmup": 3}
SMOKE = {"backbone": "resnet18", "size": (64, 96), "batch": 2, "crop": (64, 64), "seg_batch": 2, "repeats": 1,
         "warmup": 0}
# label, experts, tuned, top-p: the rows of the multi-task table
TRAINING_ROWS = (("plain fp32, dense", 3, False, False), ("tuned, dense (warm-up)", 3, True, False),
                 ("tuned, top-p (1 expert/task)", 3, True, True), ("tuned, single expert per task", 1, True, False))
TRAINING_HEADER = ["configuration", "images/s", "ms/step", "peak GB", "MFU"]
DEEPLAB_HEADER = ["configuration", "images/s", "ms/step"]


def matmul_peak(device, dtype, size=8192, repeats=10):
    """Achieved FLOP/s of a large square matrix product: the peak MFU is measured against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, repeats, 3)
    return 2 * size**3 / seconds


def measured_peak(device, smoke=False):
    """(FLOP/s, dtype name) of the matmul peak on ``device``: bf16 on CUDA, fp32 elsewhere."""
    cuda = torch.device(device).type == "cuda"
    return (matmul_peak(device, torch.bfloat16 if cuda else torch.float32, size=8192 if cuda else 512,
                        repeats=3 if smoke else 10), "bf16" if cuda else "fp32")


def autocast_for(device, tuned):
    if tuned and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def multitask_row(label, device, size, batch, backbone, experts, tuned, top_p, repeats, peak, compile_backend=None,
                  warmup=3):
    """One training configuration: {"configuration", "images_per_s", "ms_per_step", "peak_gib" (CUDA), "mfu"
    (with a peak), and with ``compile_backend`` (the backbone compiled by torch.compile) "first_step_s": the
    first step, compilation included}."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = tuned
    model = MultiTaskModel(TASKS, backbone, experts, pretrained="none").to(device)
    for bank in model.experts.values():
        bank.grouped = tuned
    if top_p:
        one_expert_router(model)
    memory_format = torch.channels_last if tuned else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if compile_backend:
        model.backbone.compile(backend=compile_backend)
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
    row = {"configuration": label}
    if compile_backend:
        started = time.perf_counter()
        train_step()
        synchronize(device)
        row["first_step_s"] = time.perf_counter() - started
    seconds = median_seconds(train_step, device, repeats, warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        train_step()
        synchronize(device)
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if peak:
        flops = forward_flops(model, lambda: (model(grading, side="grading", dense=dense),
                                              model(segmentation, side="segmentation", dense=dense)))["total"]
        row["mfu"] = 3 * flops / seconds / peak
    row.update(images_per_s=2 * batch / seconds, ms_per_step=seconds * 1e3)
    return row


def training_cells(row):
    """A multitask_row as the cells of TRAINING_HEADER."""
    return [row["configuration"], f"{row['images_per_s']:.1f}", f"{row['ms_per_step']:.0f}",
            f"{row['peak_gib']:.1f}" if "peak_gib" in row else "n/a",
            f"{100 * row['mfu']:.1f}%" if row.get("mfu") else "n/a"]


def training_title(settings):
    backbone, size, batch = settings["backbone"], settings["size"], settings["batch"]
    return (f"Multi-task training, {backbone}, 7 tasks, {size[0]}x{size[1]}, {batch}+{batch} images per step "
            "(reference on an H200: 45.6 img/s as shipped, 75.6-77.1 tuned, 124 single expert; "
            "targets >= 91 dense, >= 137 top-p, <= 31.3 / 20 GB)")


def training_rows(device, settings, peak):
    """The multi-task rows (TRAINING_ROWS), each yielded as it is measured."""
    for label, experts, tuned, top_p in TRAINING_ROWS:
        yield multitask_row(label, device, settings["size"], settings["batch"], settings["backbone"], experts, tuned,
                            top_p, settings["repeats"], peak, warmup=settings["warmup"])


def compile_rows(device, settings, backend="inductor"):
    """The tuned top-p step eager, then with the backbone compiled: two multitask_row dicts, yielded in turn."""
    for label, compiled in (("eager", None), (f"compiled backbone ({backend})", backend)):
        yield multitask_row(label, device, settings["size"], settings["batch"], settings["backbone"], 3, True, True,
                            settings["repeats"], None, compile_backend=compiled, warmup=settings["warmup"])


def inference_latency(device, size, backbone, experts, repeats, warmup=3):
    """Seconds per image at batch 1, {True: dense, False: top-p}, tuned (bf16 on CUDA, channels_last)."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = MultiTaskModel(TASKS, backbone, experts, pretrained="none").to(device).eval()
    one_expert_router(model)
    model = model.to(memory_format=torch.channels_last)
    image = torch.randn(1, 3, *size, device=device).to(memory_format=torch.channels_last)
    with torch.no_grad(), autocast_for(device, True):
        return {dense: median_seconds(lambda: model(image, dense=dense), device, repeats, warmup)
                for dense in (True, False)}


def deeplab_rows(device, crop, batch, backbone, repeats, warmup=3):
    """DeepLabV3+ OS 8 training, plain and tuned: dicts {"configuration", "images_per_s", "ms_per_step"}, yielded."""
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
        seconds = median_seconds(train_step, device, repeats, warmup)
        yield {"configuration": label, "images_per_s": batch / seconds, "ms_per_step": seconds * 1e3}


def deeplab_title(settings):
    crop, batch = settings["crop"], settings["seg_batch"]
    return (f"DeepLabV3+ {settings['backbone']} OS 8, {crop[0]}x{crop[1]} crops, batch {batch} "
            "(reference on an H200: 25.1 img/s as shipped, 58.4 tuned; target >= 60)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, help="timed steps per row (default 10; 1 with --smoke)")
    parser.add_argument("--compile", action="store_true", help="also the compiled backbone against eager")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    settings = dict(SMOKE if args.smoke else REFERENCE)
    if args.repeats:
        settings["repeats"] = args.repeats
    size, backbone = settings["size"], settings["backbone"]
    peak, dtype = measured_peak(device, args.smoke)
    print(f"Machine: {machine(device)}; measured matmul peak {peak / 1e12:.1f} TFLOP/s ({dtype})")
    print_table(training_title(settings), TRAINING_HEADER,
                [training_cells(row) for row in training_rows(device, settings, peak)])
    latency = inference_latency(device, size, backbone, 3, settings["repeats"], settings["warmup"])
    print_table(f"Inference at batch 1, {size[0]}x{size[1]} (target top-p <= 9 ms on an H200)",
                ["routing", "ms/image"], [["dense", f"{latency[True] * 1e3:.2f}"],
                                          ["top-p", f"{latency[False] * 1e3:.2f}"]])
    print_table(deeplab_title(settings), DEEPLAB_HEADER,
                [[row["configuration"], f"{row['images_per_s']:.1f}", f"{row['ms_per_step']:.0f}"]
                 for row in deeplab_rows(device, settings["crop"], settings["seg_batch"], backbone,
                                         settings["repeats"], settings["warmup"])])
    if args.compile:
        backend = "inductor" if device.type == "cuda" or not args.smoke else "eager"
        rows = list(compile_rows(device, settings, backend))
        print_table(f"Compiled backbone against eager, tuned top-p step ({backend})",
                    ["configuration", "images/s", "ms/step", "first step s"],
                    [[row["configuration"], f"{row['images_per_s']:.1f}", f"{row['ms_per_step']:.0f}",
                      f"{row.get('first_step_s', 0):.1f}"] for row in rows])


if __name__ == "__main__":
    main()
