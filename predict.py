"""Run a trained model on fundus photographs: grades, lesion masks and an overlay per image.

    python predict.py --run saved/mlt_demo photos/ IDRiD_55.jpg
    python predict.py --run saved/segmentation_demo scan.tif --out results --threshold 0.4
    python predict.py --run saved/mlt_demo photos/ --dense      # every expert on every image

INPUT is image files (JPEG, PNG, TIFF, BMP; any size; RGB, greyscale or CMYK) or folders of them.
The run (any of the three train scripts) is rebuilt from its config.json and model.pth. Each image
is resized to the size the run was trained at and normalised as in evaluation. Per image it prints
the grades with their class probabilities (classifier, multi-task), each lesion's area in pixels
and percent at the input's own resolution (segmentation, multi-task) and the experts each task ran
(multi-task: top-p routing, or all experts with --dense), and writes to --out (default
<run>/predictions/):

    <image>/overlay.png        lesions painted in their colours, legend, grades in the title
    <image>/mask_<LESION>.png  uint8 0/255 at the input's resolution, one per lesion
    predictions.json           what was printed, for every image, and the inputs that failed

An unreadable input gets an error line naming it and the others are still processed. Exit code:
0 all predicted, 1 some input failed, 2 the run folder is missing or not a finished run.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from codebase.data.idrid import IDRiDError, image_size, read_image
from codebase.evaluation.evaluate import task_key
from codebase.evaluation.visualize import LESION_COLOURS, lesion_legend, overlay
from codebase.training.atomic import atomic_write, atomic_write_text
from codebase.training.device import resolve_device
from inference.predictor import IMAGE_SUFFIXES, collect_inputs, predict_image
from inference.runs import RunError, open_run

OVERLAY_MAX_SIDE = 1024  # pixels; the overlay is a picture to look at, the masks keep full resolution


def title(name, record):
    grades = [f"{key.upper()} {grade['grade']} ({max(grade['probabilities']):.0%})"
              for key, grade in record["grades"].items()]
    return " | ".join([name] + grades)


def draw_overlay(path, masks, caption):
    """Figure: the image (at most OVERLAY_MAX_SIDE pixels a side) with its masks painted and a legend."""
    width, height = image_size(path)
    scale = min(1.0, OVERLAY_MAX_SIDE / max(width, height))
    shown = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = read_image(path, draft_size=shown).resize(shown, Image.BILINEAR)
    painted = {lesion: np.asarray(Image.fromarray(mask).resize(shown, Image.NEAREST))
               for lesion, mask in masks.items() if lesion in LESION_COLOURS}
    picture, title_space, legend_space = 8 * shown[1] / shown[0], 0.4, 0.5 if painted else 0.1  # inches
    total = picture + title_space + legend_space
    figure = Figure(figsize=(8, total))
    axes = figure.add_axes((0, legend_space / total, 1, picture / total))
    axes.imshow(overlay(np.asarray(image), painted))
    axes.set_title(caption, fontsize=10)
    axes.axis("off")
    if painted:
        lesion_legend(figure, list(painted), loc="lower center", fontsize=8)
    return figure


def write_outputs(folder, path, record, masks):
    """overlay.png and one mask_<LESION>.png per lesion in folder; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    figure = draw_overlay(path, masks, title(path.name, record))
    written = [atomic_write(folder / "overlay.png", lambda file: figure.savefig(file, format="png", dpi=100))]
    for lesion, mask in masks.items():
        png = Image.fromarray(mask.astype(np.uint8) * 255)
        written.append(atomic_write(folder / f"mask_{lesion}.png", lambda file, png=png: png.save(file, format="PNG")))
    return [str(p) for p in written]


def report(record):
    """The lines printed for one image."""
    height, width = record["size"]
    lines = [f"{record['input']} ({width}x{height})"]
    for key, grade in record["grades"].items():
        probabilities = " ".join(f"{p:.3f}" for p in grade["probabilities"])
        lines.append(f"  {key.upper():<3} {grade['grade']}  probabilities {probabilities}")
    if record["lesions"]:
        lines.append("  lesions: " + ", ".join(f"{lesion} {area['pixels']} px ({area['percent']:.2f}%)"
                                               for lesion, area in record["lesions"].items()))
    if record["experts"]:
        lines.append("  experts: " + ", ".join(f"{task_key(task).upper()} {used['experts']}"
                                               for task, used in record["experts"].items()))
    return lines


def unique_name(path, taken):
    """The image's stem, with _2, _3 ... appended when another input already has it."""
    name, number = path.stem, 1
    while name in taken:
        number += 1
        name = f"{path.stem}_{number}"
    taken.add(name)
    return name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run folder, e.g. saved/mlt_demo")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    parser.add_argument("--out", help="output folder (default: <run>/predictions)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dense", action="store_true", help="multi-task model: run every expert (default top-p)")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold (default 0.5)")
    args = parser.parse_args(argv)
    if not 0 < args.threshold < 1:
        parser.error(f"--threshold {args.threshold}: expected a probability in (0, 1)")
    try:
        device = resolve_device(args.device)
        run = open_run(args.run, device)
    except (RunError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.run) / "predictions"
    dense = True if args.dense else None
    routing = ("dense" if args.dense else f"top-p (p={run.model.top_p})") if run.kind == "multitask" else None
    results = {"run": str(args.run), "kind": run.kind, "routing": routing, "threshold": args.threshold,
               "images": [], "failed": []}
    inputs = collect_inputs(args.inputs)
    if not inputs:
        print(f"error: no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(args.inputs)}", file=sys.stderr)
        return 1
    taken = set()
    for path in inputs:
        try:
            record, masks = predict_image(run, path, device, dense, args.threshold)
            record["files"] = write_outputs(out / unique_name(path, taken), path, record, masks)
        except (IDRiDError, OSError, Image.DecompressionBombError) as error:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            print(f"error: {message}", file=sys.stderr)
            results["failed"].append({"input": str(path), "error": message})
            continue
        print("\n".join(report(record)))
        results["images"].append(record)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "predictions.json", json.dumps(results, indent=2))
    print(f"{len(results['images'])} image(s) predicted, {len(results['failed'])} failed; outputs in {out}")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
