"""Train and eval presets (torchvision.transforms.v2), applied jointly to an image and its masks.

Inputs are already resized (by `codebase.cache`): a dict {"image": tv_tensors.Image uint8 [3,H,W],
"masks": tv_tensors.Mask uint8 [L,H,W]} ("masks" optional). Geometric steps move image and masks
together (masks with nearest interpolation, so they stay 0/1 uint8); photometric steps and the
normalisation touch the image only. Output image: float32, ImageNet-normalised.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_float() -> v2.ToDtype:
    """uint8 image -> float32 in [0, 1]; masks stay uint8."""
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


class RandomHueShift(v2.Transform):
    """Shift the hue of a float RGB image by up to `max_shift` of a turn; other inputs pass through.

    A rotation of RGB space about the grey axis: one 3x3 colour matrix, where ColorJitter's
    RGB -> HSV -> RGB round trip costs more than the rest of the train preset together at 712x1072.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, max_shift: float = 0.02):
        super().__init__()
        self.max_shift = max_shift

    def make_params(self, flat_inputs: list) -> dict:
        angle = 2 * math.pi * float(torch.empty(()).uniform_(-self.max_shift, self.max_shift))
        cos, sin = math.cos(angle), math.sin(angle) / math.sqrt(3)
        grey = (1 - cos) / 3
        matrix = torch.tensor([
            [cos + grey, grey - sin, grey + sin],
            [grey + sin, cos + grey, grey - sin],
            [grey - sin, grey + sin, cos + grey],
        ])
        return {"matrix": matrix}

    def transform(self, inpt, params: dict):
        rotated = torch.einsum("ij,...jhw->...ihw", params["matrix"].to(inpt.dtype), inpt).clamp_(0, 1)
        return tv_tensors.wrap(rotated, like=inpt)


def train_transforms(crop_size: tuple[int, int] | None = None) -> v2.Compose:
    """Random crop (if crop_size=(h, w)), flips, small affine, colour jitter, blur, normalisation.

    Flips run on uint8; the rest on float images, where torchvision's kernels are several times
    faster than on uint8 (which they convert back and forth at every step).
    """
    steps = [v2.RandomCrop(tuple(crop_size))] if crop_size else []
    steps += [
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        _to_float(),
        v2.RandomApply([v2.RandomAffine(degrees=15, translate=(0.05, 0.05), scale=(0.9, 1.1))], p=0.5),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        RandomHueShift(0.02),
        v2.RandomApply([v2.GaussianBlur(kernel_size=3, sigma=(0.1, 1.0))], p=0.25),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return v2.Compose(steps)


def eval_transforms() -> v2.Compose:
    """Normalisation only (resizing happened when the arrays were loaded)."""
    return v2.Compose([_to_float(), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def to_tv_tensors(image: np.ndarray, masks: np.ndarray | None = None) -> dict:
    """uint8 image [H,W,3] (+ masks [L,H,W]) -> {"image": Image [3,H,W], "masks": Mask [L,H,W]}."""
    sample = {"image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))}
    if masks is not None:
        sample["masks"] = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks)))
    return sample
