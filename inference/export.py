"""A trained run as a self-contained model file (ONNX or TorchScript) with a JSON description.

The exported model takes a normalised image batch float32 [B, 3, H, W] at the run's trained size
(B free) and returns every task's logits, one named output per task (names = task names, in the
run's task order): classification [B, classes], segmentation [B, 1, H, W]. The multi-task
model's routing is part of the graph: top-p (default) runs every expert and mixes their outputs
with the renormalised top-p weights, which gives the outputs of the model's top-p routing without
data-dependent control flow; dense mixes every expert with the plain routing weights.
"""
import io
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from codebase.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from codebase.errors import ProjectError
from codebase.networks.routing import route
from codebase.runtime.atomic import atomic_write
from codebase.training.run_folder import refuse_run_records
from inference.runs import MODEL_KINDS, open_run

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME = "images"
ONNX_OPSET = 18
DEFAULT_THRESHOLD = 0.5
CLASS_NAMES = {
    "classification_rg": ["0 no apparent retinopathy", "1 mild NPDR", "2 moderate NPDR", "3 severe NPDR", "4 PDR"],
    "classification_mer": ["0 no hard exudates", "1 hard exudates beyond one disc diameter of the macula",
                           "2 hard exudates within one disc diameter of the macula"],
}


class ExportError(ProjectError):
    """A run that cannot be exported or an output that cannot be written; the message names the file."""


class MixtureOfExpertsExport(nn.Module):
    """MultiTaskModel's forward with every expert computed and mixed by ``route(...).mixture``.

    dense mixes with the dense routing weights; otherwise with the renormalised top-p weights
    (unselected experts weigh 0), equal to the model's own top-p forward. Returns logits per task
    as a tuple in ``model.task_specs`` order.
    """

    def __init__(self, model, dense=False):
        super().__init__()
        self.model, self.dense = model, dense
        self.tasks = list(model.task_specs)

    def mix(self, task, inputs, pooled):
        gate = self.model.gates[task]
        mixture = route(gate(pooled), self.model.top_p, gate.selection_bias, self.dense).mixture  # [B, E]
        unit = self.model.owner[task]  # the task itself, or its side's shared pool
        outputs = torch.stack([expert(*inputs) for expert in self.model.experts[unit].experts], dim=1)  # [B, E, ...]
        weights = mixture.to(outputs.dtype)
        while weights.dim() < outputs.dim():
            weights = weights.unsqueeze(-1)  # [B, E, 1, ...]
        mixed = (outputs * weights).sum(dim=1)
        if self.model.shared_experts is not None:  # always-on experts: their mean
            always = [expert(*inputs) for expert in self.model.shared_experts[unit].experts]
            mixed = mixed + torch.stack(always, dim=1).mean(dim=1)
        return mixed if self.model.task_outputs is None else self.model.task_outputs[task](mixed)

    def forward(self, images):
        model = self.model
        low_level, high_level = model.backbone(images)  # [B, Cl, H/4, W/4], [B, Ch, H/16, W/16]
        pooled = high_level.mean(dim=(2, 3))            # [B, Ch]
        logits = {task: self.mix(task, (high_level,), pooled) for task in model.grading_tasks}
        if model.segmentation_tasks:
            context = model.aspp(high_level)  # [B, A, H/16, W/16]
            context = F.interpolate(context, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
            for task in model.segmentation_tasks:
                stride4 = self.mix(task, (context, low_level), pooled)  # [B, outputs, H/4, W/4]
                logits[task] = F.interpolate(stride4, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return tuple(logits[task] for task in self.tasks)


class SingleTaskExport(nn.Module):
    """A baseline's forward (through its kind's predict) as a tuple of logits per task, in ``tasks`` order."""

    def __init__(self, model, predict, tasks):
        super().__init__()
        self.model, self.predict, self.tasks = model, predict, list(tasks)

    def forward(self, images):
        logits = self.predict(self.model, images)["logits"]
        return tuple(logits[task] for task in self.tasks)


def exportable(run, dense=False):
    """The run's model as a module images [B, 3, H, W] -> tuple of logits, one per task of run.task_specs."""
    if run.kind == "multitask":
        return MixtureOfExpertsExport(run.model, dense).eval()
    return SingleTaskExport(run.model, MODEL_KINDS[run.kind].predict, run.task_specs).eval()


def input_size(run):
    """(height, width) of the exported input: the trained size (multi-task: the segmentation size)."""
    sizes = run.input_sizes()
    return tuple(sizes.get("segmentation", sizes.get("grading")))


def trained_sizes(run):
    return {side: list(size) for side, size in run.input_sizes().items()}


def description(run, module, size, fmt, dense, model_file):
    """The JSON record written beside the model file: what goes in, what comes out, how to read it."""
    specs = run.task_specs
    sides = {task.name: task.side for task in run.all_tasks}
    height, width = size
    outputs = {task: {"shape": ["batch", specs[task]] if sides[task] == "grading"
                      else ["batch", specs[task], height, width],
                      "meaning": "class logits (softmax for probabilities)" if sides[task] == "grading"
                      else "lesion logits (sigmoid for probabilities)"} for task in module.tasks}
    routing = None
    if run.kind == "multitask":
        routing = "dense" if dense else f"top-p (p={run.model.top_p})"
    record = {
        "format": fmt,
        "model_file": Path(model_file).name,
        "run": str(run.folder),
        "kind": run.kind,
        "routing": routing,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, height, width], "dtype": "float32",
                  "layout": "RGB, values scaled to [0, 1], then (x - mean) / std per channel"},
        "input_size": [height, width],
        "trained_sizes": trained_sizes(run),
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "tasks": list(module.tasks),
        "outputs": outputs,
        "class_names": {task: names for task, names in CLASS_NAMES.items() if task in specs},
        "lesion_threshold": float(run.config.get("train", {}).get("threshold", DEFAULT_THRESHOLD)),
    }
    if any(list(trained) != [height, width] for trained in record["trained_sizes"].values()):
        record["note"] = (f"the model was trained at several sizes ({record['trained_sizes']}); this export takes "
                          f"one input of {height}x{width} for every task, so grades may differ from predict.py's")
    return record


def onnx_bytes(module, example):
    """The module as a serialised ONNX model, batch axis dynamic.

    torch.export-based exporter (``dynamo=True``, the default since PyTorch 2.9; needs onnxscript): the
    TorchScript-based one also gives outputs within 2e-6 of PyTorch, but is deprecated and slated for removal.
    """
    names = list(module.tasks)
    program = torch.onnx.export(module, (example,), input_names=[INPUT_NAME], output_names=names,
                                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=ONNX_OPSET,
                                dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def torchscript_bytes(module, example):
    """The module traced to TorchScript (routing has no data-dependent branches, so a trace is exact)."""
    traced = torch.jit.trace(module, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def default_out(run_folder, fmt, dense):
    return Path(run_folder) / f"model{'_dense' if dense else ''}{SUFFIXES[fmt]}"


def prepare_out(out):
    """The model file's path, its folder created; an existing folder gets the default file name inside."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"{out}: cannot create its folder ({error.strerror or error})") from None
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; expected the path of the model file to write")
    return out


def export_run(run_folder, fmt="onnx", dense=False, out=None):
    """Export the run in ``run_folder``; writes the model file and <out>.json; returns both paths."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out or default_out(run_folder, fmt, dense))
    json_path = out.with_name(out.name + ".json")
    refuse_run_records("--out", out, files=(json_path.name,))
    run = open_run(run_folder, "cpu")
    if dense and run.kind != "multitask":
        raise ExportError(f"{run_folder}: --dense applies to a multi-task run only; this is a {run.kind} run")
    out = prepare_out(out)
    module = exportable(run, dense)
    size = input_size(run)
    example = torch.zeros(2, 3, *size)  # [B, 3, H, W]; batch 2, so no size-1 axis is taken for a constant
    with torch.no_grad():
        data = onnx_bytes(module, example) if fmt == "onnx" else torchscript_bytes(module, example)
    record = description(run, module, size, fmt, dense, out)
    for path, write in ((out, lambda file: file.write(data)),
                        (json_path, lambda file: file.write((json.dumps(record, indent=2) + "\n").encode()))):
        try:
            atomic_write(path, write)
        except OSError as error:
            raise ExportError(f"{path}: cannot write ({error.strerror or error})") from None
    return out, json_path
