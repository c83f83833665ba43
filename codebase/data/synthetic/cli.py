"""`python -m codebase.data.synthetic`: write a tree, or draw a preview grid, or print statistics."""
from __future__ import annotations

import argparse
import sys
import time

from codebase.config import MAX_IMAGE_SIDE
from codebase.data import idrid
from codebase.data.synthetic import cameras, tree
from codebase.errors import run_tool


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 576x384") from None
    if max(width, height) > MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected at most {MAX_IMAGE_SIDE} pixels a side")
    return width, height


def count(text: str) -> int:
    """A number of images, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of images, 0 or more")
    return value


def parse_cameras(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in cameras.CAMERAS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--camera {text!r}: expected names from {', '.join(cameras.CAMERAS)}, "
                                         "separated by commas")
    return names


def main(argv=None) -> int:
    """The tool's entry point: bad input (a size, an unwritable or full folder) ends in one `error:` line
    (codebase.errors.run_tool); a Ctrl-C in one line too."""
    return run_tool(lambda: write_tree(argv))


def write_tree(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codebase.data.synthetic",
                                     description="Write a synthetic dataset in IDRiD's layout.")
    parser.add_argument("out", nargs="?", help="output data root, e.g. data/synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=parse_size, default=tree.DEFAULT_SIZE,
                        help="image size WxH (default %(default)s; IDRiD's own is 4288x2848)")
    for key, default in tree.DEFAULT_COUNTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=count, default=default, dest=key,
                            help=f"number of images (default {default})")
    parser.add_argument("--ma-scale", type=float, default=1.0,
                        help="multiply the microaneurysms' diameters (default 1: 10-25 px at 4288x2848)")
    mix = ", ".join(f"{k} {round(100 * v)}%%" for k, v in cameras.DEFAULT_MIX.items())
    parser.add_argument("--camera", type=parse_cameras, default=None,
                        help=f"camera profiles NAME[,NAME...] in equal shares (from {', '.join(cameras.CAMERAS)}; "
                             f"default: the mix {mix})")
    parser.add_argument("--preview", metavar="PNG", help="draw a preview grid (one row per camera) instead of a tree")
    parser.add_argument("--stats", action="store_true", help="print each camera's statistics instead of a tree")
    args = parser.parse_args(argv)
    if args.preview or args.stats:
        from codebase.data.synthetic import preview

        if args.preview:
            preview.preview(args.preview, args.camera, args.seed)
            print(f"wrote {args.preview}")
        if args.stats:
            print(preview.statistics_table(args.camera, args.seed))
        return 0
    if not args.out:
        parser.error("the output folder is required (or --preview PNG / --stats)")
    start = time.perf_counter()
    try:
        tree.generate(args.out, args.seed, args.size, args.seg_train, args.seg_test, args.grade_train, args.grade_test,
                      args.ma_scale, args.camera)
    except (idrid.IDRiDError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = args.seg_train + args.seg_test + args.grade_train + args.grade_test
    print(f"wrote {total} synthetic images ({args.size[0]}x{args.size[1]}) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    for split in idrid.SPLITS:
        records = idrid.grading_records(args.out, split)
        rg = [sum(r.retinopathy_grade == g for r in records) for g in range(idrid.NUM_RG_CLASSES)]
        mer = [sum(r.macular_edema_risk == g for r in records) for g in range(idrid.NUM_MER_CLASSES)]
        print(f"  grading {split}: RG 0..4 {rg}, MER 0..2 {mer}")
    return 0
