"""Sliding-window inference over images larger than a model's training crop, with optional flip TTA.

Windows are tiled and blended by MONAI's `sliding_window_inference` (Gaussian or constant weights);
this module adds the activation applied per window (so windows are blended as probabilities),
flip test-time augmentation and input checks. At most `windows_per_batch` windows go through the
model at once, whatever the image size, so memory is bounded by the window, not by the image.
MONAI is imported on first use (importing it takes seconds).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from codebase.data.image_datasets import parse_size_hw
from codebase.data.patches import WINDOW_OVERLAP, WINDOWS_PER_BATCH

BLENDS = ("gaussian", "constant")


def flip_averaged(predict: Callable, vertical: bool = False) -> Callable:
    """predict(x) averaged with its horizontally flipped counterpart flip(predict(flip(x))), and
    with the vertical one when ``vertical``; x is [N, C, H, W], flips along W (and H)."""

    def averaged(images):
        total = predict(images)
        flips = [(-1,)] + ([(-2,)] if vertical else [])
        for dims in flips:
            total = total + predict(images.flip(dims)).flip(dims)
        return total / (1 + len(flips))

    return averaged


@torch.no_grad()
def predict_sliding_window(predict_fn: Callable, image: torch.Tensor, window, overlap: float = WINDOW_OVERLAP,
                           windows_per_batch: int = WINDOWS_PER_BATCH, blend: str = "gaussian", flip_tta: bool = False,
                           vertical_flip: bool = False, activation: Callable | None = torch.sigmoid,
                           sigma_scale: float = 0.125, output_device=None) -> torch.Tensor:
    """Blend ``activation(predict_fn(windows))`` over overlapping windows of ``image``.

    predict_fn: float [N, C_in, h, w] -> [N, C, h, w] (logits for a lesion model), N <= windows_per_batch.
    image: [B, C_in, H, W] or [C_in, H, W]; one smaller than ``window`` is padded with zeros (the
    normalised mean colour) and the output cropped back. activation: applied to each window's output
    before blending (torch.sigmoid: probabilities out); None blends raw outputs. flip_tta: average the
    identity and horizontally flipped predictions (and vertically flipped, with ``vertical_flip``)
    after the activation. Returns float [B, C, H, W] ([C, H, W] for a 3-D input) on ``output_device``
    (default: the image's device).
    """
    window = parse_size_hw(window, "window")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap!r}: expected a fraction in [0, 1)")
    if int(windows_per_batch) < 1:
        raise ValueError(f"windows_per_batch={windows_per_batch!r}: expected a positive integer")
    if blend not in BLENDS:
        raise ValueError(f"blend={blend!r}: expected one of {BLENDS}")
    if image.ndim not in (3, 4):
        raise ValueError(f"image of shape {tuple(image.shape)}: expected [B, C, H, W] or [C, H, W]")
    single = image.ndim == 3
    batch = image.unsqueeze(0) if single else image  # [B, C_in, H, W]

    def windows_forward(windows):  # [N, C_in, h, w] -> [N, C, h, w]
        output = predict_fn(windows)
        return activation(output) if activation is not None else output

    from monai.inferers import (
        sliding_window_inference,  # here: importing MONAI takes seconds
    )

    predictor = flip_averaged(windows_forward, vertical_flip) if flip_tta else windows_forward
    output = sliding_window_inference(batch, window, int(windows_per_batch), predictor, overlap=overlap,
                                      mode=blend, sigma_scale=sigma_scale, padding_mode="constant", cval=0.0,
                                      device=output_device)  # [B, C, H, W]
    return output[0] if single else output
