"""A few validation images drawn with the model's predictions, for the run's event log (TensorBoard).

Each picture: the image, the predicted lesion overlay and the true one side by side (lesion
colours of codebase.evaluation.visualize), with the predicted and true grades written below.
It works for every model through the uniform prediction format
``predict(model, images) -> {"logits": {task name: tensor}}`` (codebase.model.predict,
classifier.model.predict, segmentation.model.predict).
"""
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from codebase.evaluation.visualize import LESION_COLOURS, displayable, overlay

OTHER_COLOUR = (1.0, 1.0, 1.0)  # a segmentation target without a lesion colour (a union such as "red")
LINE_HEIGHT = 12  # pixels per caption line (PIL's default font)


class PredictionPreview:
    """``preview(epoch) -> {name: uint8 [H, W, 3]}`` for `fit`: a few fixed validation samples drawn
    with the model's current predictions.

    datasets: validation datasets whose items are dicts with "image" (normalised [3, H, W]) and
    the targets the tasks read ("rg", "mer", "masks"); `count` samples are taken evenly spread over
    them, once. tasks: the model's [Task]. Segmentation outputs are shown above `threshold`
    (probability). The model is run in eval mode without gradients; its mode is restored after.
    """

    def __init__(self, model: torch.nn.Module, predict: Callable, datasets: Sequence, tasks: Sequence,
                 device: torch.device, count: int = 4, threshold: float = 0.5):
        self.model, self.predict, self.tasks, self.device = model, predict, list(tasks), device
        self.datasets = [dataset for dataset in datasets if dataset is not None and len(dataset)]
        self.count, self.threshold = count, threshold
        self._samples: list[dict] | None = None

    def __call__(self, epoch: int) -> dict[str, np.ndarray]:
        if self._samples is None:
            self._samples = _spread_samples(self.datasets, self.count)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return {f"{index}_{sample.get('name', index)}": self.draw(sample)
                        for index, sample in enumerate(self._samples)}
        finally:
            self.model.train(was_training)

    def draw(self, sample: dict) -> np.ndarray:
        """One sample: [image | predicted | true] over a caption with the grades; uint8 [H', W', 3]."""
        panels, grades = self.render(sample)
        labels = " | ".join(label for label, _ in panels)
        return _with_caption(np.concatenate([panel for _, panel in panels], axis=1), [labels, "  ".join(grades)])

    def render(self, sample: dict) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
        """The panels [(label, float [H, W, 3] in [0, 1])] and the grade texts ("RG 2 (true 3)") of one
        sample: the image; the predicted lesions where the model segments; the true ones where the
        sample has masks. Grades are predicted by argmax; "(true g)" where the sample has the grade."""
        batch = {key: value.unsqueeze(0) if isinstance(value, torch.Tensor) else value
                 for key, value in sample.items()}
        logits = self.predict(self.model, batch["image"].to(self.device))["logits"]
        picture = displayable(sample["image"])  # [H, W, 3] in [0, 1]
        panels = [("image", picture)]
        segmentation = [task for task in self.tasks if task.side == "segmentation" and task.name in logits]
        if segmentation:
            colours = {task.key: LESION_COLOURS.get(task.key, OTHER_COLOUR) for task in segmentation}
            size = picture.shape[:2]
            predicted = {task.key: _probabilities(logits[task.name], size) > self.threshold for task in segmentation}
            panels.append(("predicted", overlay(picture, predicted, colours=colours)))
            truth = {task.key: target[0, 0].cpu().numpy() for task in segmentation
                     if (target := _target(task, batch)) is not None}
            if truth:
                panels.append(("true", overlay(picture, truth, colours=colours)))
        grades = []
        for task in self.tasks:
            if task.side != "grading" or task.name not in logits:
                continue
            text = f"{task.key.upper()} {int(logits[task.name][0].argmax())}"
            target = _target(task, batch)
            grades.append(text + (f" (true {int(target.reshape(-1)[0])})" if target is not None else ""))
        return panels, grades


def _spread_samples(datasets: Sequence, count: int) -> list[dict]:
    """`count` items (at least one per dataset), evenly spread over each dataset in turn."""
    samples = []
    for position, dataset in enumerate(datasets):
        share = max(1, (count - len(samples)) // (len(datasets) - position))
        indices = np.unique(np.linspace(0, len(dataset) - 1, min(share, len(dataset))).round().astype(int))
        samples += [dataset[int(index)] for index in indices]
    return samples


def _target(task, batch: dict):
    """The task's target in a batch of one, or None where the sample does not have it."""
    try:
        return task.target_of(batch)
    except KeyError:
        return None


def _probabilities(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Segmentation logits [1, 1, h, w] -> probabilities [H, W] at the image's size."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits[0, 0].sigmoid().cpu().numpy()


def _with_caption(picture: np.ndarray, lines: list[str]) -> np.ndarray:
    """Float [H, W, 3] in [0, 1] with the non-empty `lines` written in a black strip below (widened
    to the longest line); uint8."""
    lines = [line for line in lines if line]
    height, width = picture.shape[:2]
    font = ImageFont.load_default()
    width = max([width] + [4 + int(np.ceil(font.getlength(line))) for line in lines])
    canvas = Image.new("RGB", (width, height + LINE_HEIGHT * len(lines) + 4))
    canvas.paste(Image.fromarray((picture * 255).round().astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(lines):
        draw.text((2, height + 2 + LINE_HEIGHT * index), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)
