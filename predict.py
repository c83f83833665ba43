"""Run a trained model on fundus photographs: grades, lesion masks and an overlay per image.

    python predict.py --run saved/mlt_demo photos/ IDRiD_55.jpg
    python predict.py --run saved/segmentation_demo scan.tif --out results --threshold 0.4
    python predict.py --run saved/mlt_demo photos/ --dense      # every expert on every image
    python predict.py --run saved/mlt_demo photos/ --strict     # skip inputs the fundus check flags
    python predict.py --run saved/segmentation_demo IDRiD_55.jpg --sliding 1424,2144 --flip-tta

INPUT is image files (JPEG, PNG, TIFF, BMP; any size; RGB, greyscale or CMYK) or folders of them.
The run (any of the three train scripts) is rebuilt from its config.json and its best.pth (the
weights chosen on the validation split; model.pth where the run has none) or, with --weights last,
model.pth. Each image is resized to the size the run was trained at and normalised as in evaluation.

Every input first goes through a fundus check (codebase.evaluation.fundus_check: a round bright
field on a dark surround, red dominant; exposure and sharpness for gradeability); its verdict is
printed and recorded. The prediction is still made, unless --strict: then an input the check
flags (not a fundus photograph, or poor quality) is skipped and counted as failed, reasons named.

Lesion maps of large photographs (segmentation, multi-task) come from sliding windows of the
run's trained segmentation size S (inference.predictor.segmentation_plan). --sliding auto (the
default): a run trained on patches (config data.working_size) tiles its working size, the scale
its patches were cut at; a run trained on whole images resized to S tiles the photograph resized
to --scale x S (default 2) when the input is at least that large in both sides, else one forward
at S. The model then sees structures --scale times larger than in training, with --scale^2 times
more of the photograph's pixels: use --sliding off for the trained scale. --sliding H,W tiles the
image resized to H,W. --overlap sets the windows' overlap, --flip-tta averages horizontally flipped
windows. Grading always sees the whole image at its trained size.

Per image it prints the fundus check, the grades with their class probabilities (classifier,
multi-task), each lesion's area in pixels and percent at the input's own resolution (segmentation,
multi-task) and the experts each task ran (multi-task: top-p routing, or all experts with
--dense; with sliding windows, every expert some window ran), the sliding plan and the seconds
the check and prediction took, and writes to --out (default <run>/predictions/):

    <image>/overlay.png        lesions painted in their colours, legend, grades in the title
    <image>/mask_<LESION>.png  uint8 0/255 at the input's resolution, one per lesion
    predictions.json           what was printed, for every image (fundus check, sliding plan, seconds),
                               the weights file used and the inputs that failed

An unreadable input gets an error line naming it and the others are still processed. Exit code:
0 all predicted, 1 some input failed (or was skipped by --strict), 2 the run folder is missing or
not a finished run, --out names a file or a run folder's records (its weights, checkpoint,
config.json, ...), or an output file could not be written (named; the others already written stay).
Photographs are read as viewers show them: EXIF orientation first, so masks and overlay line up with
the photograph as shown and sizes are the shown ones; an animated file's first frame, with a warning.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from codebase.config import MAX_IMAGE_SIDE
from codebase.data.images import ImageFileError, read_image, read_size
from codebase.data.patches import WINDOW_OVERLAP
from codebase.errors import run_tool
from codebase.evaluation.visualize import LESION_COLOURS, lesion_legend, overlay
from codebase.runtime.atomic import StorageError, atomic_write
from codebase.runtime.device import resolve_device
from codebase.tasks import task_label
from codebase.training.run_folder import refuse_run_records
from inference.predictor import (
    DEFAULT_SCALE,
    IMAGE_SUFFIXES,
    check_input,
    collect_inputs,
    predict_image,
)
from inference.runs import WEIGHTS, RunError, open_run

OVERLAY_MAX_SIDE = 1024  # pixels; the overlay is a picture to look at, the masks keep full resolution
OVERLAY_DPI = 100
OVERLAY_WIDTH = 8  # inches: the figure's width whatever the image's shape (title and legend need it)


def title(name, record):
    grades = [f"{key.upper()} {grade['grade']} ({max(grade['probabilities']):.0%})"
              for key, grade in record["grades"].items()]
    return " | ".join([name] + grades)


def draw_overlay(path, masks, caption):
    """Figure: the image (at most OVERLAY_MAX_SIDE pixels a side) with its masks painted and a legend."""
    width, height = read_size(path)
    scale = min(1.0, OVERLAY_MAX_SIDE / max(width, height))
    shown = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = read_image(path, draft_size=shown).resize(shown, Image.BILINEAR)
    painted = {lesion: np.asarray(Image.fromarray(mask).resize(shown, Image.NEAREST))
               for lesion, mask in masks.items() if lesion in LESION_COLOURS}
    # the picture fits a box OVERLAY_WIDTH wide and OVERLAY_MAX_SIDE pixels tall, whatever its shape, so
    # the figure has at most OVERLAY_WIDTH x (OVERLAY_MAX_SIDE / dpi + 0.9) inches (800 x 1114 pixels)
    fit = min(OVERLAY_WIDTH / shown[0], OVERLAY_MAX_SIDE / OVERLAY_DPI / shown[1])
    picture_width, picture = shown[0] * fit, shown[1] * fit  # inches
    title_space, legend_space = 0.4, 0.5 if painted else 0.1  # inches
    total = picture + title_space + legend_space
    figure = Figure(figsize=(OVERLAY_WIDTH, total), dpi=OVERLAY_DPI)
    axes = figure.add_axes(((1 - picture_width / OVERLAY_WIDTH) / 2, legend_space / total,
                            picture_width / OVERLAY_WIDTH, picture / total))
    axes.imshow(overlay(np.asarray(image), painted))
    axes.set_title(caption, fontsize=10)
    axes.axis("off")
    if painted:
        lesion_legend(figure, list(painted), loc="lower center", fontsize=8)
    return figure


def write_outputs(folder, path, record, masks):
    """overlay.png and one mask_<LESION>.png per lesion in folder; returns their paths."""
    save_folder(folder)
    figure = draw_overlay(path, masks, title(path.name, record))
    written = [save(folder / "overlay.png", lambda file: figure.savefig(file, format="png", dpi=OVERLAY_DPI))]
    for lesion, mask in masks.items():
        png = Image.fromarray(mask.astype(np.uint8) * 255)
        written.append(save(folder / f"mask_{lesion}.png", lambda file, png=png: png.save(file, format="PNG")))
    return [str(p) for p in written]


def save_folder(folder):
    """Create an output folder; a failure is a StorageError naming it (the input is not to blame)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"{folder}: the output folder could not be created ({error.strerror or error}); "
                           "choose another --out") from None


def save(path, write):
    """atomic_write, with any failure a StorageError naming the output file that could not be written."""
    try:
        return atomic_write(path, write)
    except StorageError:
        raise
    except OSError as error:
        raise StorageError(f"{path}: could not be written ({error.strerror or error}); choose another --out") from None


def report(record):
    """The lines printed for one image."""
    height, width = record["size"]
    lines = [f"{record['input']} ({width}x{height})", "  fundus check: " + fundus_text(record["fundus_check"])]
    for key, grade in record["grades"].items():
        probabilities = " ".join(f"{p:.3f}" for p in grade["probabilities"])
        lines.append(f"  {key.upper():<3} {grade['grade']}  probabilities {probabilities}")
    if record["lesions"]:
        lines.append("  lesions: " + ", ".join(f"{lesion} {area['pixels']} px ({area['percent']:.2f}%)"
                                               for lesion, area in record["lesions"].items()))
    if record["experts"]:
        lines.append("  experts: " + ", ".join(f"{task_label(task)} {used['experts']}"
                                               for task, used in record["experts"].items()))
    plan = record.get("segmentation")
    if plan and plan["mode"] == "sliding":
        (h, w), (wh, ww) = plan["working_size"], plan["window"]
        lines.append(f"  lesions from sliding windows {wh}x{ww} over the image at {h}x{w}, overlap {plan['overlap']}"
                     + (", flip TTA" if plan["flip_tta"] else ""))
    lines.append(f"  time {record['seconds']:.2f} s")
    return lines


def fundus_text(check):
    """"fundus, quality good" or "NOT a fundus photograph, quality poor (reasons)"."""
    verdict = "fundus" if check["is_fundus"] else "NOT a fundus photograph"
    reasons = f" ({'; '.join(check['reasons'])})" if check["reasons"] else ""
    return f"{verdict}, quality {check['quality']}{reasons}"


def flagged(check):
    """Whether --strict skips an input: not a fundus photograph, or not gradeable."""
    return not check["is_fundus"] or check["quality"] != "good"


def fundus_check(path):
    """check_input(path).as_dict(); an image too small to check is reported as flagged, with the reason."""
    try:
        return check_input(path).as_dict()
    except ValueError as error:
        return {"is_fundus": False, "quality": "poor", "reasons": [str(error)]}


def output_problem(out):
    """Why ``out`` cannot be the output folder (it or a parent is a file), or None."""
    for folder in (out, *out.parents):
        if folder.exists():
            return None if folder.is_dir() else (f"--out {out}: {folder} is a file, expected a folder "
                                                 "(or a path where one can be made)")
    return None


def sliding_arg(text):
    """"auto", "off" or "H,W" (a working resolution in pixels)."""
    if text in ("auto", "off"):
        return text
    try:
        height, width = (int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, off or HEIGHT,WIDTH, e.g. 1424,2144") from None
    if not (32 <= height <= MAX_IMAGE_SIDE and 32 <= width <= MAX_IMAGE_SIDE):
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least 32x32 and at most "
                                         f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels")
    return height, width


def unique_name(path, taken):
    """The image's stem, with _2, _3 ... appended when another input already has it."""
    name, number = path.stem, 1
    while name in taken:
        number += 1
        name = f"{path.stem}_{number}"
    taken.add(name)
    return name


def main(argv=None):
    """predict.py's entry point: `predict(argv)`'s exit code; bad input, or outputs that cannot be
    written, end in one `error:` line and exit code 2 (codebase.errors.run_tool)."""
    return run_tool(lambda: predict(argv))


def predict(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run folder, e.g. saved/mlt_demo")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    parser.add_argument("--out", help="output folder (default: <run>/predictions)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dense", action="store_true", help="multi-task model: run every expert (default top-p)")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold (default 0.5)")
    parser.add_argument("--weights", choices=WEIGHTS, default="best",
                        help="best: best.pth, chosen on the validation split (model.pth where the run has none); "
                             "last: model.pth, the last epoch's (default best)")
    parser.add_argument("--strict", action="store_true",
                        help="skip inputs the fundus check flags (not fundus, or poor quality); they count as failed")
    parser.add_argument("--sliding", type=sliding_arg, default="auto", metavar="auto|off|H,W",
                        help="lesion maps from sliding windows of the trained size: auto (default), off, or over "
                             "the image resized to H,W")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                        help=f"--sliding auto, whole-image runs: tile inputs at least this many times the trained "
                             f"size, resized to it (default {DEFAULT_SCALE:g})")
    parser.add_argument("--overlap", type=float, default=WINDOW_OVERLAP,
                        help=f"sliding windows' overlap in [0, 1) (default {WINDOW_OVERLAP})")
    parser.add_argument("--flip-tta", action="store_true", help="lesion maps averaged with horizontally flipped input")
    args = parser.parse_args(argv)
    if not 0 < args.threshold < 1:
        parser.error(f"--threshold {args.threshold}: expected a probability in (0, 1)")
    if not 0 <= args.overlap < 1:
        parser.error(f"--overlap {args.overlap}: expected a fraction in [0, 1)")
    if not args.scale >= 1:
        parser.error(f"--scale {args.scale}: expected at least 1")
    out = Path(args.out) if args.out else Path(args.run) / "predictions"
    problem = output_problem(out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    refuse_run_records("--out", out, folder=True)
    try:
        device = resolve_device(args.device)
        run = open_run(args.run, device, args.weights)
    except (RunError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    dense = args.dense
    routing = ("dense" if args.dense else f"top-p (p={run.model.top_p})") if run.kind == "multitask" else None
    results = {"run": str(args.run), "kind": run.kind, "weights": run.weights_file, "routing": routing,
               "threshold": args.threshold, "strict": args.strict,
               "sliding": {"setting": list(args.sliding) if isinstance(args.sliding, tuple) else args.sliding,
                           "scale": args.scale, "overlap": args.overlap, "flip_tta": args.flip_tta},
               "images": [], "failed": []}
    print(f"{run.kind} run {args.run}, weights {run.weights_file}")
    inputs = collect_inputs(args.inputs)
    if not inputs:
        print(f"error: no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(args.inputs)}", file=sys.stderr)
        return 1
    if run.tasks("segmentation") and args.sliding != "off":
        import monai.inferers  # noqa: F401  (imported once here, so that it is not timed with the first image)
    taken = set()
    for path in inputs:
        try:
            started = time.perf_counter()
            check = fundus_check(path)
            if args.strict and flagged(check):
                message = f"{path}: skipped (--strict): fundus check: {fundus_text(check)}"
                print(f"error: {message}", file=sys.stderr)
                results["failed"].append({"input": str(path), "error": message, "fundus_check": check})
                continue
            record, masks = predict_image(run, path, device, dense, args.threshold, args.sliding, args.scale,
                                          args.overlap, args.flip_tta)
            record["fundus_check"] = check
            record["seconds"] = round(time.perf_counter() - started, 4)  # check and prediction, not the files
        except (ImageFileError, OSError, Image.DecompressionBombError) as error:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            print(f"error: {message}", file=sys.stderr)
            results["failed"].append({"input": str(path), "error": message})
            continue
        record["files"] = write_outputs(out / unique_name(path, taken), path, record, masks)  # StorageError ends it
        print("\n".join(report(record)))
        results["images"].append(record)
    save_folder(out)
    save(out / "predictions.json", lambda file: file.write(json.dumps(results, indent=2).encode()))
    print(f"{len(results['images'])} image(s) predicted, {len(results['failed'])} failed; outputs in {out}")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
