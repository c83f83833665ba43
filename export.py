"""Export a trained run to ONNX or TorchScript, with a JSON file that says how to use it.

    python export.py --run saved/mlt_demo                       # saved/mlt_demo/model.onnx (+ .json)
    python export.py --run saved/mlt_demo --dense --out mlt_dense.onnx
    python export.py --run saved/classifier_demo --format torchscript

The run (any of the three train scripts) is rebuilt from its config.json and model.pth. The exported
model takes float32 images [B, 3, H, W] at the run's trained size (multi-task: the segmentation
size), normalised with the mean and std the JSON gives (B is free), and returns one output per task,
named by task (classification_rg, segmentation_ma, ...): class logits [B, classes] or lesion logits
[B, 1, H, W]. The multi-task model keeps top-p routing (every expert computed, mixed with the
renormalised top-p weights: the same outputs as predict.py) or, with --dense, mixes all experts.
<out>.json records input size, normalisation, tasks and outputs, class names, the lesion threshold,
the run's kind and the routing. Exit code: 0 written, 2 the run folder is missing or not a finished
run, or the output cannot be written.
"""
import argparse
import sys

from codebase.errors import ProjectError, run_tool
from inference.export import FORMATS, export_run


def main(argv=None):
    """export.py's entry point: bad input ends in one `error:` line and exit code 2 (codebase.errors.run_tool)."""
    return run_tool(lambda: export(argv))


def export(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run folder, e.g. saved/mlt_demo")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="model file format (default onnx)")
    parser.add_argument("--dense", action="store_true", help="multi-task model: mix every expert (default top-p)")
    parser.add_argument("--out", help="model file to write (default: <run>/model[_dense].onnx or .torchscript.pt)")
    args = parser.parse_args(argv)
    try:
        model_path, json_path = export_run(args.run, args.format, args.dense, args.out)
    except ProjectError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {model_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
