"""Train and eval presets (torchvision.transforms.v2), applied jointly to an image and its masks.

Inputs are already resized (by `codebase.data.cache`): a dict {"image": tv_tensors.Image uint8 [3,H,W],
"masks": tv_tensors.Mask uint8 [L,H,W]} ("masks" optional). Geometric steps move image and masks
together (masks with nearest interpolation, so they stay 0/1 uint8); photometric steps and the
normalisation touch the image only. Output image: float32, ImageNet-normalised.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
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


class GaussianBlur3(v2.Transform):
    """3x3 Gaussian blur of a float image with sigma drawn from `sigma`, as v2.GaussianBlur(3, sigma)
    computes it (same kernel, reflect padding, same random draw), but as two 1-D passes of tensor
    arithmetic: about 4x faster at 712x1072 than the depthwise convolution torchvision runs on the CPU.
    Other inputs (masks) pass through."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        super().__init__()
        self.sigma = sigma

    def make_params(self, flat_inputs: list) -> dict:
        sigma = torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item()
        weights = torch.exp(-0.5 * (torch.tensor([-1.0, 0.0, 1.0]) / sigma) ** 2)
        return {"kernel": (weights / weights.sum()).tolist()}

    def transform(self, inpt, params: dict):
        side, middle, _ = params["kernel"]
        padded = F.pad(inpt.as_subclass(torch.Tensor).unsqueeze(0), (1, 1, 1, 1), mode="reflect")[0]
        rows = side * (padded[..., :, :-2] + padded[..., :, 2:]) + middle * padded[..., :, 1:-1]
        blurred = side * (rows[..., :-2, :] + rows[..., 2:, :]) + middle * rows[..., 1:-1, :]
        return tv_tensors.wrap(blurred, like=inpt)


class MasksAsBits(v2.Compose):
    """A Compose that carries up to 8 binary masks through its steps as the bits of one uint8 channel.

    Geometric steps then move one mask channel instead of L (the affine's nearest-neighbour warp of five
    712x1072 masks costs more than the image's bilinear one); nearest sampling moves every bit exactly as
    it would move its own mask, so the output is identical to running the steps on the masks themselves.
    """

    def forward(self, *inputs):
        sample = inputs[0] if len(inputs) == 1 else None
        if not (isinstance(sample, dict) and "masks" in sample and 0 < sample["masks"].shape[0] <= 8):
            return super().forward(*inputs)
        masks = sample["masks"].as_subclass(torch.Tensor).to(torch.uint8)  # [L, H, W] of 0/1
        bits = (1 << torch.arange(masks.shape[0], dtype=torch.uint8)).view(-1, 1, 1)
        packed = (masks * bits).sum(dim=0, keepdim=True, dtype=torch.uint8)
        out = super().forward({**sample, "masks": tv_tensors.Mask(packed)})
        unpacked = (out["masks"].as_subclass(torch.Tensor) & bits).ne(0).to(torch.uint8)
        return {**out, "masks": tv_tensors.Mask(unpacked)}


def train_transforms(crop_size: tuple[int, int] | None = None) -> v2.Compose:
    """Random crop (if crop_size=(h, w)), flips, small affine, colour jitter, blur, normalisation.

    Flips run on uint8; the rest on float images, where torchvision's kernels are several times
    faster than on uint8 (which they convert back and forth at every step). Masks travel as bits of
    one channel (MasksAsBits) and the blur is GaussianBlur3, two exact but faster forms.
    """
    steps = [v2.RandomCrop(tuple(crop_size))] if crop_size else []
    steps += [
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        _to_float(),
        v2.RandomApply([v2.RandomAffine(degrees=15, translate=(0.05, 0.05), scale=(0.9, 1.1))], p=0.5),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        RandomHueShift(0.02),
        v2.RandomApply([GaussianBlur3(sigma=(0.1, 1.0))], p=0.25),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return MasksAsBits(steps)


def eval_transforms() -> v2.Compose:
    """Normalisation only (resizing happened when the arrays were loaded)."""
    return v2.Compose([_to_float(), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def to_tv_tensors(image: np.ndarray, masks: np.ndarray | None = None) -> dict:
    """uint8 image [H,W,3] (+ masks [L,H,W]) -> {"image": Image [3,H,W], "masks": Mask [L,H,W]}."""
    sample = {"image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))}
    if masks is not None:
        sample["masks"] = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks)))
    return sample
