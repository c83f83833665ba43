"""Whole resized images vs lesion-aware patches, both scored at the original mask resolution.

Two DeepLabV3+ models start from the same weights and take the same number of optimizer steps on the
same number of samples per step: (a) whole training images resized to --whole-size; (b) --crop
patches from images kept at --size (the working resolution), a --lesion-share of them centred on a
lesion. Both train with AdamW as the train scripts make it (--lr for every parameter: there is no
pretrained backbone here; --weight-decay) and a cosine schedule to 0 over the steps (--schedule), on
the train scripts' lesion loss with --dice-on-absent.
Each is scored on the test split against the full-size masks (codebase.evaluation.fullres):
(a) by one forward of the resized image, (b) by sliding windows of --crop over the working image.
A patch costs less than a whole image per step, so --time-matched adds (c): patches again, for as
many steps as fit in (a)'s training seconds (measured in the same run), with the schedule over them.
Also measured: one pass of the patch dataset over the training images with an empty cache (decoding,
writing the cache) against a second, cached pass, reading only and as a training epoch (forward,
backward, step); and, in a separate process per size, the time and
peak memory of sliding-window inference of one image at each --inference-sizes (resident set on CPU,
allocated memory on CUDA).

On synthetic data these figures say only that the pipeline runs, not how a method fares on IDRiD.

    python benchmarks/bench_fullres.py --smoke                          # seconds: tiny tree, tiny model
    python benchmarks/bench_fullres.py                                  # the issue's setting (see --help)
    python benchmarks/bench_fullres.py --data-root data --size 2848 4288 --crop 512 512 --steps 2000
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table, ratio
from codebase.data import idrid
from codebase.data.image_datasets import SegmentationDataset
from codebase.data.loaders import seed_everything
from codebase.data.patches import (
    LESION_POSITIONS,
    WINDOW_OVERLAP,
    PatchSegmentationDataset,
)
from codebase.data.synthetic import ensure_dataset
from codebase.evaluation.cost import machine
from codebase.evaluation.fullres import evaluate_full_resolution
from codebase.evaluation.sliding_window import predict_sliding_window
from codebase.runtime.device import resolve_device
from codebase.training.losses import SegmentationLoss
from codebase.training.optim import make_optimizer
from segmentation.model import DeepLabV3Plus


def build_model(args, device):
    seed_everything(args.seed)  # both arms start from the same weights
    return DeepLabV3Plus(args.backbone, 16, "none", aspp_channels=args.channels,
                         decoder_channels=args.channels).to(device)


def warm_up(args, device) -> None:
    """One training step and one sliding-window pass on a throwaway model, so neither arm's timing pays
    for first-call set-up (kernel selection, importing MONAI)."""
    model = build_model(args, device)
    image = torch.randn(1, 3, *args.crop, device=device)
    model(image).sum().backward()
    predict_sliding_window(model.eval(), image, args.crop)


def train(model, dataset, args, device, order=None, checkpoint=None) -> float:
    """AdamW steps of args.batch samples, as the train scripts make the optimizer (weight decay
    --weight-decay) with --schedule stepped per optimizer step over args.steps; `order`: the sample
    indices (default: args.steps batches drawn at random with args.seed). `checkpoint(step, seconds)`
    is called after every --eval-every steps and after the last (its own time not counted; the
    model is put back in training mode after it). Returns the seconds of training."""
    if order is None:
        generator = torch.Generator().manual_seed(args.seed)
        order = torch.randint(len(dataset), (args.steps * args.batch,), generator=generator).tolist()
    loader = DataLoader(dataset, batch_size=args.batch, sampler=order, num_workers=args.workers)
    criterion = SegmentationLoss(dice_on_absent=args.dice_on_absent == "true")
    optimizer = make_optimizer([model], args.lr, args.lr, args.weight_decay, device)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.steps))
                 if args.schedule == "cosine" else None)
    model.train()
    seconds, steps = 0.0, len(loader)
    start = time.perf_counter()
    for step, batch in enumerate(loader, 1):
        loss, _ = criterion(model(batch["image"].to(device)), batch["masks"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if checkpoint is not None and (step == steps or (args.eval_every and step % args.eval_every == 0)):
            seconds += time.perf_counter() - start
            checkpoint(step, seconds)
            model.train()
            start = time.perf_counter()
    return seconds + time.perf_counter() - start


def score(model, root, args, device, whole: bool, cache_dir) -> tuple[dict, float]:
    model.eval()
    start = time.perf_counter()
    if whole:
        results = evaluate_full_resolution(model, root, split="test", image_size=args.whole_size, device=device,
                                           cache_dir=cache_dir)
    else:
        results = evaluate_full_resolution(model, root, split="test", image_size=args.size, window=args.crop,
                                           overlap=args.overlap, windows_per_batch=args.windows_per_batch,
                                           device=device, cache_dir=cache_dir)
    return results, time.perf_counter() - start


def score_row(name, step, batch, pixels, train_seconds, eval_seconds, results) -> list:
    return ([name, step, step * batch, f"{pixels[0]}x{pixels[1]}", f"{train_seconds:.1f}", f"{eval_seconds:.1f}"]
            + [f"{results[lesion]['aupr_fullres']:.3f}" for lesion in idrid.LESIONS]
            + [f"{results[lesion]['dice_fullres']:.3f}" for lesion in idrid.LESIONS]
            + [f"{results['mean_aupr_fullres']:.3f}"])


def data_passes(dataset) -> tuple[float, float]:
    """Seconds of one pass over ``dataset`` (one crop per image) with its cache empty, then cached."""
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        for index in range(len(dataset.records)):
            dataset[index]
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def training_epochs(make_dataset, args, device, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of one training epoch (one crop per training image, args.batch per step) of a
    throwaway model over a dataset with its cache empty, and of the next epoch, cached: what the first
    pass costs a training run. ``make_dataset(i)`` gives repeat i's dataset, on its own empty cache;
    an epoch of 6 images is a few seconds, so one pair alone swings by a few tenths."""
    first, cached = [], []
    for repeat in range(repeats):
        dataset = make_dataset(repeat)
        model = build_model(args, device)
        order = list(range(len(dataset.records)))
        first.append(train(model, dataset, args, device, order))
        cached.append(train(model, dataset, args, device, order))
    return float(np.median(first)), float(np.median(cached))


def resident_mib() -> tuple[float, float]:
    """(current, peak) resident set of this process in MiB. On Linux the peak is VmHWM, which starts
    afresh at exec and at `reset_peak_resident` (getrusage's ru_maxrss would carry over the peak of
    the parent that started this process); elsewhere ru_maxrss."""
    status = Path("/proc/self/status")
    if status.is_file():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS
    return peak, peak


def reset_peak_resident() -> None:
    """Start this process's peak resident set afresh from its current one (Linux 4.0+; else nothing)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure_inference(args) -> dict:
    """In this (child) process: seconds and peak memory of sliding-window inference of one image of
    --measure-inference HEIGHT WIDTH."""
    device = resolve_device(args.device)
    model = build_model(args, device).eval()
    image = torch.randn(1, 3, *args.measure_inference, device=device)
    predict_sliding_window(model, image[..., :args.crop[0], :args.crop[1]], args.crop)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before, _ = resident_mib()  # the model, the input image and the libraries
    reset_peak_resident()
    start = time.perf_counter()
    probs = predict_sliding_window(model, image, args.crop, overlap=args.overlap,
                                   windows_per_batch=args.windows_per_batch, flip_tta=args.flip_tta)
    probs.sum().item()  # waits for the device
    seconds = time.perf_counter() - start
    peak = {"peak_rss_mib": resident_mib()[1], "rss_before_mib": before}
    if device.type == "cuda":
        peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return {"seconds": seconds, **peak}


def inference_in_child(argv, size) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--measure-inference", *map(str, size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"inference measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, help="IDRiD root (default: a synthetic tree of --native size)")
    parser.add_argument("--native", type=int, nargs=2, default=(1424, 2144), metavar=("HEIGHT", "WIDTH"),
                        help="size of the synthetic tree's images when no --data-root (default: half IDRiD's)")
    parser.add_argument("--train-images", type=int, default=6, help="synthetic training images")
    parser.add_argument("--test-images", type=int, default=2, help="synthetic test images")
    parser.add_argument("--ma-scale", type=float, default=1.0,
                        help="synthetic microaneurysms' diameters x this (1: 10-25 px across at 4288x2848, "
                             "5-12.5 px at 2144x1424; see codebase.data.synthetic.lesions)")
    parser.add_argument("--camera", default=None,
                        help="camera profiles of the synthetic tree, NAME[,NAME...] (default: the generator's mix)")
    parser.add_argument("--size", type=int, nargs=2, default=(1424, 2144), metavar=("HEIGHT", "WIDTH"),
                        help="working resolution of the patch arm and of its sliding-window inference")
    parser.add_argument("--whole-size", type=int, nargs=2, default=(712, 1072), metavar=("HEIGHT", "WIDTH"),
                        help="input size of the whole-image arm")
    parser.add_argument("--crop", type=int, nargs=2, default=(384, 384), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also score both arms every this many steps (0: after the last step only)")
    parser.add_argument("--lesion-share", type=float, default=0.5)
    parser.add_argument("--centre-weight", action="append", default=[], metavar="LESION=WEIGHT",
                        help="relative chance of a lesion kind to be the one a lesion crop is drawn on (default "
                             "1 each; the train scripts' data.patches.centre_weights); repeatable")
    parser.add_argument("--lesion-position", choices=LESION_POSITIONS, default="centre",
                        help="where the drawn lesion pixel lies in its crop (data.patches.lesion_position)")
    parser.add_argument("--dice-on-absent", choices=("true", "false"), default="false",
                        help="both arms' loss: whether a lesion absent from the batch adds its soft-Dice loss "
                             "(the train scripts' loss.dice_on_absent, true there; false here: most patches lack "
                             "most lesions, and the term drives such a lesion's every pixel to 0)")
    parser.add_argument("--time-matched", action="store_true",
                        help="also train a third model on patches for as many steps as fit in the resized arm's "
                             "training time (its own cosine schedule over those steps; scored after the last)")
    parser.add_argument("--overlap", type=float, default=WINDOW_OVERLAP)
    parser.add_argument("--windows-per-batch", type=int, default=4)
    parser.add_argument("--inference-sizes", type=int, nargs="+", default=(1424, 2144, 2848, 4288),
                        metavar="HEIGHT WIDTH", help="pairs: one sliding-window inference per size")
    parser.add_argument("--flip-tta", action="store_true", help="flip TTA in the inference measurement")
    parser.add_argument("--backbone", default="mobilenet_v3_large")
    parser.add_argument("--channels", type=int, default=64, help="ASPP and decoder width")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's rate, backbone included (from scratch)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                        help="learning rate over the steps: cosine to 0 (as the train scripts' demos) or constant")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny tree and model, a few steps (the tests)")
    parser.add_argument("--measure-inference", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.inference_sizes) % 2:
        parser.error("--inference-sizes: expected HEIGHT WIDTH pairs")
    weights = {}
    for item in args.centre_weight:
        lesion, _, weight = item.partition("=")
        try:
            weights[lesion] = float(weight)
        except ValueError:
            parser.error(f"--centre-weight {item!r}: expected LESION=WEIGHT, e.g. MA=4")
        if lesion not in idrid.LESIONS or not weights[lesion] > 0:
            parser.error(f"--centre-weight {item!r}: expected one of {', '.join(idrid.LESIONS)} and a weight > 0")
    args.centre_weights = weights
    if args.smoke:
        args.native = args.size = (96, 144)
        args.whole_size, args.crop, args.steps, args.batch, args.channels = (48, 72), (48, 48), 2, 2, 16
        args.eval_every = 1
        args.train_images, args.test_images, args.inference_sizes, args.backbone = 4, 2, (96, 144), "resnet18"
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.measure_inference:
        print(json.dumps(measure_inference(args)))
        return 0
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        root, cache_dir = args.data_root, Path(scratch) / "cache"
        if root is None:
            height, width = args.native
            root = ensure_dataset(Path(scratch) / "data", size=(width, height), seg_train=args.train_images,
                                  seg_test=args.test_images, grade_train=0, grade_test=0, ma_scale=args.ma_scale,
                                  camera=args.camera.split(",") if args.camera else None)
        sampling = {"lesion_share": args.lesion_share, "centre_weights": args.centre_weights,
                    "lesion_position": args.lesion_position}
        patches = PatchSegmentationDataset(root, "train", args.crop, image_size=args.size, cache_dir=cache_dir,
                                           **sampling)
        warm_up(args, device)
        first_pass, cached_pass = data_passes(patches)
        first_epoch, cached_epoch = training_epochs(
            lambda repeat: PatchSegmentationDataset(root, "train", args.crop, image_size=args.size,
                                                    cache_dir=Path(scratch) / f"epoch-cache-{repeat}", **sampling),
            args, device)
        arms = {
            "whole, resized": (SegmentationDataset(root, "train", args.whole_size, train=True, cache_dir=cache_dir),
                               True),
            "patches, lesion-aware": (patches, False),
        }
        rows, scores, seconds = [], {}, {}

        def train_arm(name, dataset, whole, arm_args):
            """Train a fresh model on ``dataset`` with ``arm_args``; a row per evaluation; its training seconds."""
            model = build_model(args, device)
            pixels = args.whole_size if whole else args.crop

            def checkpoint(step, train_seconds):
                results, eval_seconds = score(model, root, args, device, whole, cache_dir)
                scores[name] = results  # the last checkpoint's stay
                rows.append(score_row(name, step, args.batch, pixels, train_seconds, eval_seconds, results))

            return train(model, dataset, arm_args, device, checkpoint=checkpoint)

        for name, (dataset, whole) in arms.items():
            seconds[name] = train_arm(name, dataset, whole, args)
        if args.time_matched:
            steps = max(1, round(args.steps * seconds["whole, resized"] / seconds["patches, lesion-aware"]))
            train_arm("patches, same training time", patches, False,
                      argparse.Namespace(**{**vars(args), "steps": steps, "eval_every": 0}))
    print(f"\n{machine(device)}; working size {args.size[0]}x{args.size[1]}, {args.backbone}; synthetic data "
          "unless --data-root: the figures show the pipeline runs, not how a method fares on IDRiD")
    weights = ", ".join(f"{lesion} {args.centre_weights.get(lesion, 1.0):g}" for lesion in idrid.LESIONS)
    print(f"Patches: {args.lesion_share:.0%} of crops drawn on a lesion pixel (kind weights {weights}; the pixel "
          f"{'at the centre of' if args.lesion_position == 'centre' else 'anywhere in'} the crop); loss: soft Dice of "
          f"lesions absent from a batch {'kept' if args.dice_on_absent == 'true' else 'left out'}")
    print_table(f"Same optimizer steps and samples ({args.schedule} schedule over {args.steps} steps; a row per "
                "evaluation" + ("; 'same training time': patches for the steps that fit in the resized arm's "
                                "training seconds, its schedule over those" if args.time_matched else "")
                + "): AUPR and Dice at the original mask resolution (test split)",
                ["arm", "steps", "samples", "sample px", "train s", "eval s",
                 *(f"{lesion} AUPR" for lesion in idrid.LESIONS), *(f"{lesion} Dice" for lesion in idrid.LESIONS),
                 "mean AUPR"], rows)
    whole = scores.pop("whole, resized")
    print_table(f"Patches over whole resized images ({args.steps} steps): AUPR at the last evaluation, per lesion",
                ["lesion", *(f"{label}: {kind}" for label in scores for kind in ("ratio", "difference"))],
                [[lesion, *(cell for patch in scores.values()
                            for cell in (ratio(patch[lesion]["aupr_fullres"], whole[lesion]["aupr_fullres"]),
                                         f"{patch[lesion]['aupr_fullres'] - whole[lesion]['aupr_fullres']:+.3f}"))]
                 for lesion in idrid.LESIONS])
    print_table(f"Patch dataset, one {args.crop[0]}x{args.crop[1]} crop per training image at {args.size[0]}x"
                f"{args.size[1]}: the first pass decodes each file once and writes the cache",
                ["pass", "first (empty cache) s", "cached s", "first / cached"],
                [["reading the crops only", f"{first_pass:.2f}", f"{cached_pass:.2f}", ratio(first_pass, cached_pass)],
                 [f"training epoch (batch {args.batch}, forward, backward, step; median of 3)", f"{first_epoch:.2f}",
                  f"{cached_epoch:.2f}", ratio(first_epoch, cached_epoch)]])
    rows = []
    for height, width in zip(args.inference_sizes[::2], args.inference_sizes[1::2]):
        inference = inference_in_child(argv, (height, width))
        rows.append([f"{height}x{width}", f"{inference['seconds']:.2f}", f"{inference['peak_rss_mib']:.0f}",
                     f"{inference['rss_before_mib']:.0f}", f"{inference.get('peak_cuda_mib', float('nan')):.0f}"])
    print_table(f"Sliding-window inference of one image, window {args.crop[0]}x{args.crop[1]}, "
                f"{args.windows_per_batch} windows per forward (a separate process per size)",
                ["image", "seconds", "peak RSS MiB (process, during inference)", "RSS before inference MiB", "peak CUDA MiB"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
