"""Routing that saves compute: FLOPs, step and inference time of top-p against dense routing.

Prints four tables, each against a baseline measured in the same run:
1. forward FLOPs per image, dense vs top-p, and the top-p figure predicted as the dense count
   less each expert's count where it does not run (codebase/evaluation/cost.py predicted_top_p_flops);
2. a training step of the segmentation side and inference at batch 1, dense vs top-p, with a
   router that picks one expert per task;
3. top-p selection for a batch of 256, vectorised vs a per-image Python loop;
4. dense experts as one grouped computation vs one expert module after another.

    python benchmarks/bench_routing.py                  # CPU defaults (ResNet50, 7 tasks)
    python benchmarks/bench_routing.py --device cuda --size 712 1072 --batch 9
    python benchmarks/bench_routing.py --smoke          # seconds; what CI runs
"""
import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import TASKS, one_expert_router, print_table, ratio  # noqa: E402
from codebase.evaluation.cost import (  # noqa: E402
    forward_flops,
    machine,  # noqa: E402
    median_seconds,
    predicted_top_p_flops,
    synchronize,
)
from codebase.model import MultiTaskModel  # noqa: E402
from codebase.networks.expert_layout import dispatch_routings  # noqa: E402
from codebase.networks.routing import routing_weights, top_p_mask  # noqa: E402
from codebase.training.losses import SegmentationLoss  # noqa: E402


def flops_table(model, size, device):
    image = torch.randn(1, 3, *size, device=device)
    dense = forward_flops(model, lambda: model(image, dense=True))
    sparse = forward_flops(model, lambda: model(image, dense=False))
    predicted, routing = predicted_top_p_flops(model, image)  # per-image dispatch (cells and shared pools included)
    routing = dispatch_routings(routing, model.owner)  # a shared pool's experts run on the union of its tasks'
    run_share = torch.stack([r.image_mask.float().mean() for r in routing.values()]).mean().item()
    # The always-on part: everything but the routed experts.
    shared = sum(dense.get(name, 0) for name in ("backbone", "aspp", "gates", "shared_experts", "task_outputs"))
    rows = [["dense", dense["total"] / 1e9, "1.00x", "", ""],
            ["top-p", sparse["total"] / 1e9, ratio(sparse["total"], dense["total"]), predicted / 1e9,
             f"{100 * (sparse['total'] - predicted) / predicted:+.2f}%"]]
    print_table(f"Forward GFLOPs per image at {size[0]}x{size[1]} (shared part {shared / 1e9:.2f} GFLOPs, "
                f"experts run / experts = {run_share:.3f})",
                ["routing", "GFLOPs", "vs dense", "predicted", "error"], rows)


def step_and_inference_table(model, size, batch, device, repeats):
    images = torch.randn(batch, 3, *size, device=device)
    masks = (torch.rand(batch, 5, *size, device=device) > 0.97).to(torch.uint8)
    criterion = SegmentationLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tasks = model.segmentation_tasks

    def train_step(dense):
        def run():
            optimizer.zero_grad(set_to_none=True)
            logits = model.forward_segmentation(images, dense=dense)["logits"]
            loss, _ = criterion(torch.cat([logits[t] for t in tasks], dim=1), masks)
            loss.backward()
            optimizer.step()
        return run

    def infer(dense):
        one = images[:1]
        return lambda: model(one, dense=dense)

    model.train()
    step = {dense: median_seconds(train_step(dense), device, repeats) for dense in (True, False)}
    model.eval()
    with torch.no_grad():
        latency = {dense: median_seconds(infer(dense), device, repeats) for dense in (True, False)}
    rows = [[f"segmentation training step, batch {batch}", step[True] * 1e3, step[False] * 1e3,
             ratio(step[False], step[True]), "<= 0.75x"],
            ["inference, batch 1 (all tasks)", latency[True] * 1e3, latency[False] * 1e3,
             ratio(latency[False], latency[True]), "<= 0.70x"]]
    print_table(f"Dense vs top-p with a router that picks one expert per task ({size[0]}x{size[1]}), ms",
                ["what", "dense", "top-p", "top-p / dense", "target"], rows)


def per_image_loop_top_p(weights, p):
    """Top-p as a per-image Python loop (the slow form this project replaces)."""
    masks = []
    for row in weights:
        order = torch.argsort(row, descending=True)
        mask = torch.zeros_like(row, dtype=torch.bool)
        total = 0.0
        for expert in order:
            mask[expert] = True
            total += float(row[expert])
            if total >= p:
                break
        masks.append(mask)
    return torch.stack(masks)


def selection_table(device, repeats, batch=256, experts=3, p=0.8):
    weights = routing_weights(torch.randn(batch, experts, device=device) * 2)
    assert torch.equal(top_p_mask(weights, p).cpu(), per_image_loop_top_p(weights.cpu(), p))
    loop = median_seconds(lambda: per_image_loop_top_p(weights, p), device, max(3, repeats // 3), 1)
    vectorised = median_seconds(lambda: top_p_mask(weights, p), device, repeats * 20, 5)
    print_table(f"Top-p selection, batch {batch}, {experts} experts, p={p}, ms",
                ["form", "ms", "speed-up"],
                [["per-image Python loop", loop * 1e3, "1.00x"],
                 ["vectorised (sort + cumsum, no host sync)", vectorised * 1e3, ratio(loop, vectorised)]])


def grouped_table(model, size, batch, device, repeats):
    images = torch.randn(batch, 3, *size, device=device)
    model, sequential = copy.deepcopy(model), copy.deepcopy(model)
    for bank, other in zip(model.experts.values(), sequential.experts.values()):
        bank.grouped, other.grouped = True, False
    auto = next(iter(sequential.experts.values()))
    auto.grouped = "auto"
    auto_form = "grouped" if auto.runs_grouped(device) else "sequential"
    auto.grouped = False
    # Equality first, on identical copies (the timed training passes below draw different dropout masks).
    with torch.no_grad():
        model.eval(), sequential.eval()
        a, b = model(images, dense=True)["logits"], sequential(images, dense=True)["logits"]
        worst = max(a, key=lambda t: (a[t] - b[t]).abs().max().item())
        error, scale = (a[worst] - b[worst]).abs().max().item(), b[worst].abs().max().item()
    rows = []
    for label, train in (("forward", False), ("forward + backward", True)):
        timings = []
        for candidate in (sequential, model):
            candidate.train(train)

            def run(candidate=candidate, train=train):
                with torch.set_grad_enabled(train):
                    out = candidate(images, dense=True)["logits"]
                    if train:
                        sum(v.float().mean() for v in out.values()).backward()
            timings.append(median_seconds(run, device, repeats))
        rows.append([label, timings[0] * 1e3, timings[1] * 1e3, ratio(timings[0], timings[1])])
    print_table(f"Dense mode, whole model, experts one after another vs grouped ({size[0]}x{size[1]}, batch {batch}, "
                f"{machine(device)}), ms; outputs differ by at most {error:.1e} ({worst}, values up to {scale:.2g}); "
                f"the default (grouped=\"auto\") runs the {auto_form} form on {device.type}",
                ["pass", "sequential", "grouped", "speed-up"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=[356, 536], metavar=("H", "W"),
                        help="image size for timings (default: half of 712x1072, for 2 CPU cores)")
    parser.add_argument("--flops-size", type=int, nargs=2, default=[712, 1072], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone, args.size, args.flops_size, args.batch, args.repeats = "resnet18", [64, 96], [64, 96], 2, 1
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MultiTaskModel(TASKS, args.backbone, args.experts, pretrained="none").to(device)
    one_expert_router(model)
    print(f"Machine: {machine(device)}; {args.backbone}, {args.experts} experts, {len(TASKS)} tasks, p={model.top_p}")
    model.eval()
    flops_table(model, args.flops_size, device)
    step_and_inference_table(model, args.size, args.batch, device, args.repeats)
    selection_table(device, args.repeats)
    grouped_table(model, args.size, args.batch, device, args.repeats)
    synchronize(device)


if __name__ == "__main__":
    main()
