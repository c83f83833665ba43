"""What the fundus check decides, and the features it decides on, for inputs of known kind.

Prints one table: per input its expected decision, the check's decision and reasons, and every
feature (see codebase/evaluation/fundus_check.py for the thresholds set from this table). Inputs:
1. synthetic fundus images (a synthetic IDRiD tree per camera profile and size, written by
   codebase.data.synthetic; an image with a recorded acquisition defect is expected to be a fundus,
   and poor if the defect is blur; its other defects are not what the check grades);
2. scikit-learn's sample photographs (china.jpg, flower.jpg), which are not fundus photographs;
3. blurred (Gaussian), darkened and over-exposed copies of synthetic fundus images;
4. synthetic non-fundus inputs: uniform grey, random noise, a greyscale photograph.

    python benchmarks/bench_fundus_check.py
    python benchmarks/bench_fundus_check.py --sizes 192x128 576x384 --images 4
    python benchmarks/bench_fundus_check.py --smoke     # one small size, one image; what the tests run
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codebase.data import idrid  # noqa: E402
from codebase.data.synthetic import CAMERAS, generate, image_records  # noqa: E402
from codebase.evaluation.fundus_check import check_fundus  # noqa: E402

SHOWN = ("field_fraction", "disc_iou", "surround_fraction", "surround_ratio", "red_over_green",
         "luminance", "clipped_fraction", "sharpness")


def blurred(rgb, sigma_fraction=0.005, min_sigma=1.5):
    """Gaussian blur, sigma a fraction of the longest side but at least min_sigma pixels (1.5 px at 128 and 192,
    2.9 px at 576, 21 px at 4288)."""
    radius = max(min_sigma, sigma_fraction * max(rgb.shape[:2]))
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))


def scaled(rgb, factor):
    """Exposure changed by ``factor`` (darkened below 1, over-exposed and clipped above 1)."""
    return np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def synthetic_fundus(sizes, images, cameras=tuple(CAMERAS)):
    """[(name, rgb, defects)]: the ``images`` grading-train images of a synthetic tree per camera and size (W, H)."""
    found = []
    with tempfile.TemporaryDirectory() as folder:
        for camera in cameras:
            for width, height in sizes:
                root = generate(Path(folder) / f"{camera}-{width}x{height}", seed=0, size=(width, height), seg_train=0,
                                seg_test=0, grade_train=images, grade_test=0, camera=camera)
                records = image_records(root)
                for record in idrid.grading_records(root, "train"):
                    path = idrid.grading_image_path(root, "train", record.name)
                    defects = records[path.relative_to(root).as_posix()]["defects"]
                    found.append((f"synthetic {camera} {width}x{height} {record.name}",
                                  np.asarray(Image.open(path).convert("RGB")), defects))
    return found


def non_fundus(size=(384, 256), seed=0):
    """[(name, rgb)]: scikit-learn's sample photographs and synthetic non-fundus inputs."""
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    cases = [(f"sklearn {Path(name).name}", image) for name, image in zip(samples.filenames, samples.images)]
    rng = np.random.default_rng(seed)
    width, height = size
    china = samples.images[0]
    cases += [("uniform grey", np.full((height, width, 3), 128, np.uint8)),
              ("random noise", rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
              ("greyscale photograph", np.repeat(np.asarray(Image.fromarray(china).convert("L"))[..., None], 3, axis=2))]
    return cases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["128x96", "192x128", "256x170", "576x384", "1072x712"],
                        help="synthetic image sizes WxH")
    parser.add_argument("--images", type=int, default=3, help="synthetic images per size")
    parser.add_argument("--cameras", nargs="+", default=list(CAMERAS), choices=list(CAMERAS),
                        help="camera profiles of the synthetic images (default: all)")
    parser.add_argument("--smoke", action="store_true", help="one 128x96 synthetic image per camera: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.images = ["128x96"], 1
    sizes = [tuple(int(v) for v in text.split("x")) for text in args.sizes]
    fundus = synthetic_fundus(sizes, args.images, args.cameras)
    cases = [(name + (f" [{', '.join(defects)}]" if defects else ""), rgb,
              "poor: blurred" if "blur" in defects else "fundus" if defects else "fundus, good")
             for name, rgb, defects in fundus]
    for name, rgb, defects in fundus:
        if defects:
            continue  # degraded copies of clean images only
        cases += [(f"{name} blurred", blurred(rgb), "poor: blurred"),
                  (f"{name} darkened x0.3", scaled(rgb, 0.3), "poor: too dark"),
                  (f"{name} over-exposed x2.5", scaled(rgb, 2.5), "poor: over-exposed")]
    cases += [(name, rgb, "not fundus") for name, rgb in non_fundus()]

    header = ["input", "expected", "fundus", "quality", "reasons", "ms"] + list(SHOWN)
    rows, agree = [], 0
    for name, rgb, expected in cases:
        start = time.perf_counter()
        check = check_fundus(rgb)
        milliseconds = 1000 * (time.perf_counter() - start)
        if expected == "not fundus":
            right = not check.is_fundus
        elif expected == "fundus, good":
            right = check.is_fundus and check.quality == "good"
        elif expected == "fundus":
            right = check.is_fundus
        else:
            right = check.quality == "poor" and expected.split(": ")[1] in check.reasons
        agree += right
        rows.append([name, expected + ("" if right else "  <-- WRONG"), "yes" if check.is_fundus else "no",
                     check.quality, "; ".join(check.reasons) or "-", f"{milliseconds:.1f}"]
                    + [f"{check.features[key]:.3f}" for key in SHOWN])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    for index, row in enumerate([header] + rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    print(f"\n{agree}/{len(cases)} decisions as expected")
    return 0 if agree == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
