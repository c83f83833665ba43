"""Predicting with a trained run: inputs found and loaded as in evaluation, one image's grades,
lesion masks at the input's resolution and routing. Shared by predict.py and compare_models.py.

Lesion maps of large photographs can be predicted with sliding windows (see `segmentation_plan`):
the window is always the run's trained segmentation size S (what the model takes in one forward);
the working resolution is what the photograph is resized to before the windows tile it.
"""
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from codebase.data.cache import load_resized_image
from codebase.data.images import read_image, read_size
from codebase.data.patches import WINDOW_OVERLAP
from codebase.data.transforms import eval_transforms, to_tv_tensors
from codebase.evaluation.fundus_check import WORK_SIDE, check_fundus
from codebase.evaluation.sliding_window import predict_sliding_window
from codebase.runtime.device import autocast

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
EVAL_PRESET = eval_transforms()


def forward_passes(run, size=None):
    """{side: (height, width)}: the forwards one image needs; one "all" pass when both sides share a size.

    size (height, width) replaces the trained sizes, e.g. to compare the cost of models at one resolution.
    """
    sizes = run.input_sizes() if size is None else dict.fromkeys(run.input_sizes(), tuple(size))
    if len(sizes) == 2 and len(set(sizes.values())) == 1:
        return {"all": sizes["grading"]}
    return sizes


def load_input(path, size):
    """An image file -> float32 [1, 3, H, W] at size (height, width), normalised as in evaluation."""
    image = load_resized_image(path, size)  # uint8 [H, W, 3], decoded and resized as the datasets do
    return EVAL_PRESET(to_tv_tensors(image))["image"].as_subclass(torch.Tensor).unsqueeze(0)


@torch.no_grad()
def forward(run, images, dense=False):
    """images {side: [B, 3, H, W]} (see forward_passes) -> {"logits": {task: ...}, "routing": {task: Routing}}."""
    logits, routing = {}, {}
    for side, batch in images.items():
        out = run.predict(batch, side=side, dense=dense)
        logits.update(out["logits"])
        routing.update(out.get("routing", {}))
    return {"logits": logits, "routing": routing}


def collect_inputs(paths):
    """Files as given; folders -> their image files (by suffix), sorted. Missing paths are kept (and fail later)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


SLIDING_MODES = ("auto", "off")
DEFAULT_SCALE = 2.0  # auto: a whole-image run's photograph is tiled at this many times its trained size


@dataclass(frozen=True)
class SegmentationPlan:
    """How one image's lesion maps are predicted: "whole" (one forward at the trained size S) or
    "sliding" (windows of S tiling the image resized to working_size, blended by MONAI)."""

    mode: str
    working_size: tuple  # (height, width) the image is resized to
    window: tuple  # (height, width): the run's trained segmentation size
    overlap: float = WINDOW_OVERLAP
    flip_tta: bool = False

    def as_dict(self):
        return {"mode": self.mode, "working_size": list(self.working_size), "window": list(self.window),
                "overlap": self.overlap, "flip_tta": self.flip_tta}


def trained_working_size(run):
    """(height, width) a patch-trained run cut its training windows from (config data.working_size), else None."""
    size = run.config["data"].get("working_size")
    return tuple(size) if size else None


def segmentation_plan(run, input_size, sliding="auto", scale=DEFAULT_SCALE, overlap=WINDOW_OVERLAP, flip_tta=False):
    """The SegmentationPlan for an input of input_size (height, width).

    sliding "off": the whole image at S, as the run was evaluated. (height, width): windows of S over the
    image resized to that size. "auto": a patch-trained run (data.working_size recorded) slides over its
    working size, the scale its windows were cut at; a whole-image run slides over round(scale * S) when
    the input is at least ``scale`` times S in both sides (the model then sees structures ``scale`` times
    larger than in training, but ``scale``^2 times more pixels of the photograph), else one forward at S.
    """
    window = tuple(run.input_sizes()["segmentation"])
    if sliding == "off":
        working = window
    elif sliding == "auto":
        working = trained_working_size(run)
        if working is None:
            large = all(side >= scale * trained for side, trained in zip(input_size, window))
            working = tuple(round(scale * side) for side in window) if large else window
    else:
        working = tuple(sliding)
    mode = "sliding" if working != window or flip_tta else "whole"
    return SegmentationPlan(mode, working, window, overlap, flip_tta)


def sliding_probabilities(run, image, plan, dense=False):
    """image [1, 3, h, w] at plan.working_size -> (probabilities [1, T, h, w] in run.tasks("segmentation")
    order, [routing of each window forward])."""
    tasks = run.tasks("segmentation")
    routings = []

    def window_logits(windows):  # [N, 3, S_h, S_w] -> [N, T, S_h, S_w]
        out = run.predict(windows, side="segmentation", dense=dense)
        routings.append(out.get("routing", {}))
        return torch.cat([out["logits"][task.name].float() for task in tasks], dim=1)

    probabilities = predict_sliding_window(window_logits, image, plan.window, overlap=plan.overlap,
                                           flip_tta=plan.flip_tta)
    return probabilities, routings


def check_input(path):
    """The fundus check (codebase.evaluation.fundus_check) of an image file, decoded near WORK_SIDE pixels."""
    return check_fundus(read_image(path, draft_size=(WORK_SIDE, WORK_SIDE)))


def _windows_experts(routings):
    """{task: {"experts": every expert some window ran, "windows", "experts_per_window"}} over window forwards."""
    summary = {}
    for task in dict.fromkeys(task for routing in routings for task in routing):
        masks = torch.cat([routing[task].mask.bool() for routing in routings if task in routing])  # [windows, E]
        summary[task] = {"experts": masks.any(dim=0).nonzero().flatten().tolist(), "windows": int(masks.shape[0]),
                         "experts_per_window": round(float(masks.sum(dim=1).float().mean()), 4)}
    return summary


def predict_image(run, path, device, dense, threshold, sliding="off", scale=DEFAULT_SCALE, overlap=WINDOW_OVERLAP,
                  flip_tta=False):
    """One image -> (record for predictions.json, {lesion: bool [H, W] mask at the input's resolution}).

    sliding, scale, overlap, flip_tta: how lesion maps are predicted (see segmentation_plan); the record's
    "segmentation" says which plan was used and "seconds" how long the prediction took.
    """
    started = time.perf_counter()
    width, height = read_size(path)
    passes = forward_passes(run)
    plan = None
    if "segmentation" in run.input_sizes():
        plan = segmentation_plan(run, (height, width), sliding, scale, overlap, flip_tta)
        if plan.mode == "sliding":  # grading still sees the whole image; lesions come from the windows
            passes = {side: size for side, size in run.input_sizes().items() if side == "grading"}
    images = {side: load_input(path, size).to(device) for side, size in passes.items()}
    with autocast(device, run.config["train"]["amp"]):
        out = forward(run, images, dense)
        if plan is not None and plan.mode == "sliding":
            working = load_input(path, plan.working_size).to(device)
            probabilities, window_routings = sliding_probabilities(run, working, plan, dense)  # [1, T, h, w]
    logits = out["logits"]
    record = {"input": str(path), "size": [height, width], "grades": {}, "lesions": {}, "experts": {},
              "segmentation": plan.as_dict() if plan is not None else None}
    for task in run.tasks("grading"):
        class_probabilities = torch.softmax(logits[task.name][0].float(), dim=0)  # [classes]
        record["grades"][task.key] = {"grade": int(class_probabilities.argmax()),
                                      "probabilities": [round(p, 4) for p in class_probabilities.tolist()]}
    masks = {}
    for index, task in enumerate(run.tasks("segmentation")):
        if plan.mode == "sliding":
            full = F.interpolate(probabilities[:, index:index + 1].float(), size=(height, width), mode="bilinear",
                                 align_corners=False)[0, 0]  # [H, W] probabilities
        else:
            full = torch.sigmoid(F.interpolate(logits[task.name].float(), size=(height, width), mode="bilinear",
                                               align_corners=False)[0, 0])  # [H, W]
        mask = (full >= threshold).cpu().numpy()  # bool [H, W]
        masks[task.key] = mask
        pixels = int(mask.sum())
        record["lesions"][task.key] = {"pixels": pixels, "percent": round(100 * pixels / mask.size, 4)}
    for task, routing in out["routing"].items():
        chosen = routing.mask[0].nonzero().flatten().tolist()
        weights = routing.mixture[0, chosen].tolist()
        record["experts"][task] = {"experts": chosen, "weights": [round(w, 4) for w in weights]}
    if plan is not None and plan.mode == "sliding":
        record["experts"].update(_windows_experts(window_routings))
    record["seconds"] = round(time.perf_counter() - started, 4)
    return record, masks
