"""Data loading speed: seconds per segmentation sample (image + five masks, train preset) read from a
full-size synthetic IDRiD tree, without and with the on-disk cache; DataLoader samples/s per worker count.

    python benchmarks/bench_data.py                 # 4288x2848 tree in data/bench_4288x2848 (made once)
    python benchmarks/bench_data.py --images 8 --workers 0 1 2
    python benchmarks/bench_data.py --smoke         # tiny and quick (used by the tests)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codebase.data import idrid  # noqa: E402
from codebase.data.image_datasets import SegmentationDataset  # noqa: E402
from codebase.data.images import read_image, read_mask
from codebase.data.synthetic import ensure_dataset, parse_size  # noqa: E402
from codebase.data.transforms import to_tv_tensors, train_transforms  # noqa: E402


def per_sample(get, count: int, passes: int) -> float:
    """Mean seconds of get(i) over `passes` passes of `count` samples."""
    start = time.perf_counter()
    for _ in range(passes):
        for index in range(count):
            get(index)
    return (time.perf_counter() - start) / (count * passes)


def reference_sample(record: idrid.SegmentationRecord, size_hw, transform) -> dict:
    """The plain way, as the reference implementation loads a sample: decode the full-size JPEG and
    resize it; read each mask at full size as int64 and resize it (nearest); augment. No cache."""
    height, width = size_hw
    full = read_image(record.image_path)
    image = np.array(full.resize((width, height), Image.BILINEAR))
    masks = torch.zeros((len(idrid.LESIONS), height, width), dtype=torch.int64)
    for channel, lesion in enumerate(idrid.LESIONS):
        if record.mask_paths[lesion] is not None:
            mask = torch.from_numpy(read_mask(record.mask_paths[lesion], full.size)).long()  # full size
            masks[channel] = F.interpolate(mask[None, None].float(), size=size_hw, mode="nearest")[0, 0].long()
    return transform(to_tv_tensors(image, masks))


def loader_rate(dataset, workers: int, samples: int, batch_size: int) -> float:
    """Steady-state samples per second: timed from the first batch on (worker start-up excluded)."""
    order = [i % len(dataset) for i in range(samples + batch_size)]
    loader = iter(DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers))
    next(loader)
    start = time.perf_counter()
    for _ in loader:
        pass
    return samples / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="synthetic data root (default data/bench_<size>, made if absent)")
    parser.add_argument("--size", type=parse_size, default=(4288, 2848), help="source image size WxH")
    parser.add_argument("--image-size", type=parse_size, default=(1072, 712), help="training size WxH")
    parser.add_argument("--images", type=int, default=4, help="segmentation images to time")
    parser.add_argument("--passes", type=int, default=2, help="passes over the images per timing")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--loader-samples", type=int, default=40, help="samples timed per DataLoader setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    parser.add_argument("--smoke", action="store_true", help="tiny tree, one pass: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.image_size, args.images, args.passes, args.workers = (192, 128), (96, 64), 2, 1, [0, 1]
        args.loader_samples = 4
    torch.set_num_threads(args.threads)
    size_hw = (args.image_size[1], args.image_size[0])

    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or (Path(scratch) / "data" if args.smoke else Path("data") / f"bench_{args.size[0]}x{args.size[1]}")
        if not idrid.tree_present(root):
            print(f"generating {args.images} synthetic images of {args.size[0]}x{args.size[1]} in {root} ...", flush=True)
        ensure_dataset(root, size=args.size, seg_train=args.images, seg_test=1, grade_train=0, grade_test=0)
        records = idrid.segmentation_records(root, "train")[: args.images]
        count = len(records)
        transform = train_transforms()

        def dataset(cache_dir):
            data = SegmentationDataset(root, "train", size_hw, train=True, cache_dir=cache_dir)
            data.records = records
            return data

        rows = [("reference: full-size decode, int64 masks", per_sample(
            lambda i: reference_sample(records[i], size_hw, transform), count, args.passes))]
        uncached = dataset(False)
        rows.append(("no cache: reduced-scale JPEG decode", per_sample(uncached.__getitem__, count, args.passes)))
        cold = []
        for _ in range(args.passes):
            with tempfile.TemporaryDirectory(dir=scratch) as cache_dir:
                cold.append(per_sample(dataset(Path(cache_dir)).__getitem__, count, 1))
        rows.append(("cold cache: decode + write entry", float(np.mean(cold))))
        warm = dataset(Path(scratch) / "cache")
        per_sample(warm.__getitem__, count, 1)  # fill the cache
        rows.append(("warm cache: load + train preset", per_sample(warm.__getitem__, count, args.passes)))
        load_only = lambda i: (warm.cache.image(records[i].image_path, size_hw), warm.load_masks(i))  # noqa: E731
        rows.append(("warm cache: load only", per_sample(load_only, count, args.passes)))

        cached = rows[3][1]
        print(f"\nSegmentation sample = image + 5 masks, {args.size[0]}x{args.size[1]} -> "
              f"{args.image_size[0]}x{args.image_size[1]}, train preset; {count} images x {args.passes} passes, "
              f"torch threads {args.threads}")
        print(f"{'mode':<40} {'s/sample':>9} {'x warm cache':>13}")
        for name, seconds in rows:
            print(f"{name:<40} {seconds:>9.4f} {seconds / cached:>13.1f}")
        print(f"ratio reference / cached: {rows[0][1] / cached:.1f}x (target >= 20x); "
              f"first pass (cold cache) / cached: {rows[2][1] / cached:.1f}x (target <= 2x); "
              f"no cache / cached: {rows[1][1] / cached:.1f}x")

        samples = args.loader_samples
        print(f"\nDataLoader, warm cache, train preset, batch {args.batch_size}, {samples} samples after the first batch")
        print(f"{'workers':>7} {'samples/s':>10}")
        for workers in args.workers:
            print(f"{workers:>7} {loader_rate(warm, workers, samples, args.batch_size):>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
