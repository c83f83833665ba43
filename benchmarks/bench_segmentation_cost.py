"""What the DeepLabV3+ baseline costs: parameters and forward FLOPs, at output stride 8 and 16.

FLOPs are counted by torch.utils.flop_counter (codebase.evaluation.cost.forward_flops) for one image, with
the model and the image on the meta device: shapes only, no arithmetic, so the count is exact
and takes seconds even for ResNet50 at output stride 8. A multiply-add counts as two FLOPs.

    python benchmarks/bench_segmentation_cost.py                       # ResNet50 at 712x1072
    python benchmarks/bench_segmentation_cost.py --backbone resnet101 --size 1424 2144
    python benchmarks/bench_segmentation_cost.py --smoke               # resnet18 at 64x96; what CI runs
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table  # noqa: E402
from codebase.evaluation.cost import count_parameters, forward_flops  # noqa: E402
from codebase.networks.backbones import BACKBONES  # noqa: E402
from segmentation.model import DeepLabV3Plus  # noqa: E402

PARTS = ("backbone", "aspp", "decoder")


def measure(backbone, output_stride, size, channels, separable):
    """(parameters, {"total": FLOPs, "backbone": ..., "aspp": ..., "decoder": ...}) for one image."""
    with torch.device("meta"):
        model = DeepLabV3Plus(backbone, output_stride, "none", aspp_channels=channels, decoder_channels=channels, separable=separable).eval()
        image = torch.empty(1, 3, *size)
    return count_parameters(model), forward_flops(model, lambda: model(image))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", choices=sorted(BACKBONES))
    parser.add_argument("--size", type=int, nargs=2, default=(712, 1072), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--channels", type=int, default=256, help="ASPP and decoder width")
    parser.add_argument("--separable", action="store_true", help="depthwise-separable 3x3 convs in ASPP and decoder")
    parser.add_argument("--smoke", action="store_true", help="resnet18 at 64x96: a quick check that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone, args.size = "resnet18", (64, 96)

    rows = []
    for output_stride in (8, 16):
        parameters, flops = measure(args.backbone, output_stride, args.size, args.channels, args.separable)
        rows.append([f"OS {output_stride}", f"{parameters / 1e6:.2f}", f"{flops['total'] / 1e9:.1f}"]
                    + [f"{flops[part] / 1e9:.1f}" for part in PARTS])
    convs = "depthwise-separable" if args.separable else "full"
    print_table(f"DeepLabV3+ {args.backbone} ({convs} 3x3 convs, width {args.channels}): forward GFLOPs for one "
                f"{args.size[0]}x{args.size[1]} image (a multiply-add = 2 FLOPs)",
                ["output stride", "params (M)", "GFLOPs", *(f"{part} GFLOPs" for part in PARTS)], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
