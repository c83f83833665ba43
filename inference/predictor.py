"""Predicting with a trained run: inputs found and loaded as in evaluation, one image's grades,
lesion masks at the input's resolution and routing. Shared by predict.py and compare_models.py."""
from pathlib import Path

import torch
import torch.nn.functional as F

from codebase.data.cache import load_resized_image
from codebase.data.idrid import image_size
from codebase.data.transforms import eval_transforms, to_tv_tensors
from codebase.training.device import autocast

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
EVAL_PRESET = eval_transforms()


def forward_passes(run, size=None):
    """{side: (height, width)}: the forwards one image needs; one "all" pass when both sides share a size.

    size (height, width) replaces the trained sizes, e.g. to compare the cost of models at one resolution.
    """
    sizes = run.input_sizes() if size is None else dict.fromkeys(run.input_sizes(), tuple(size))
    if len(sizes) == 2 and len(set(sizes.values())) == 1:
        return {"all": sizes["classification"]}
    return sizes


def load_input(path, size):
    """An image file -> float32 [1, 3, H, W] at size (height, width), normalised as in evaluation."""
    image = load_resized_image(path, size)  # uint8 [H, W, 3], decoded and resized as the datasets do
    return EVAL_PRESET(to_tv_tensors(image))["image"].as_subclass(torch.Tensor).unsqueeze(0)


@torch.no_grad()
def forward(run, images, dense=None):
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


def predict_image(run, path, device, dense, threshold):
    """One image -> (record for predictions.json, {lesion: bool [H, W] mask at the input's resolution})."""
    images = {side: load_input(path, size).to(device) for side, size in forward_passes(run).items()}
    width, height = image_size(path)
    with autocast(device, run.config["train"]["amp"]):
        out = forward(run, images, dense)
    logits = out["logits"]
    record = {"input": str(path), "size": [height, width], "grades": {}, "lesions": {}, "experts": {}}
    for task in run.tasks("classification"):
        probabilities = torch.softmax(logits[task.name][0].float(), dim=0)  # [classes]
        record["grades"][task.key] = {"grade": int(probabilities.argmax()),
                                            "probabilities": [round(p, 4) for p in probabilities.tolist()]}
    masks = {}
    for task in run.tasks("segmentation"):
        full = F.interpolate(logits[task.name].float(), size=(height, width), mode="bilinear", align_corners=False)
        mask = (torch.sigmoid(full[0, 0]) >= threshold).cpu().numpy()  # bool [H, W]
        masks[task.key] = mask
        pixels = int(mask.sum())
        record["lesions"][task.key] = {"pixels": pixels, "percent": round(100 * pixels / mask.size, 4)}
    for task, routing in out["routing"].items():
        chosen = routing.mask[0].nonzero().flatten().tolist()
        weights = routing.mixture[0, chosen].tolist()
        record["experts"][task] = {"experts": chosen, "weights": [round(w, 4) for w in weights]}
    return record, masks
