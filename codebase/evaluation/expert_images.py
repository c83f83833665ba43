"""Which images each expert takes: per task, the images with the largest routing weight for each
expert, drawn as captioned thumbnails (an expert analysis in the manner of GMoE, Li et al. 2023).

    from codebase.evaluation.expert_images import write_expert_images
    write_expert_images(model, {"grading": grading_test, "segmentation": segmentation_test}, device, "out.png")

train_mlt_model.py writes <run>/plots/router_expert_images.png this way for the test split at the
end of training (with the last weights, those of model.pth, unless run.plots is false).
"""
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from codebase.evaluation.visualize import displayable
from codebase.runtime.atomic import atomic_write
from codebase.runtime.device import autocast

EXPERT_IMAGES_FIGURE = "router_expert_images.png"


@dataclass
class ExpertImages:
    """One task's view of a dataset: the routing weights of its images, and per expert the images that
    weigh most for it."""

    side: str
    weights: torch.Tensor  # [N, E] routing weights (the router's softmax, before top-p selection; with region
                           # routing the mean over each image's cells)
    top: list[list[int]]   # per expert, dataset indices by descending weight for it (at most ``count``)

    def chosen(self, expert: int) -> int:
        """How many images weigh most for ``expert``."""
        return int((self.weights.argmax(dim=1) == expert).sum())


@torch.no_grad()
def expert_images(predict, datasets: dict, device, count: int = 4, batch_size: int = 8, amp: str = "off") -> dict:
    """{task: ExpertImages} over ``datasets`` ({side: dataset}, e.g. the test split's grading and
    segmentation sets); predict(images, side) -> {"routing": {task: Routing}} for that side's tasks."""
    weights = {}  # task -> (side, [[B, E]])
    for side, dataset in datasets.items():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            with autocast(torch.device(device), amp):
                routings = predict(batch["image"].to(device), side).get("routing", {})
            for task, routing in routings.items():
                weights.setdefault(task, (side, []))[1].append(routing.image_weights.detach().float().cpu())
    result = {}
    for task, (side, parts) in weights.items():
        stacked = torch.cat(parts)  # [N, E]
        top = stacked.argsort(dim=0, descending=True, stable=True)[:count].T.tolist()  # [E][<= count]
        result[task] = ExpertImages(side, stacked, top)
    return result


def caption(dataset, index: int, weight: float) -> str:
    """The camera (when the data root records it) and grade (of graded images) of an image, and its weight."""
    cameras = getattr(dataset, "cameras", None)
    parts = [(cameras[index] if cameras is not None and cameras[index] else "camera unknown")]
    record = dataset.records[index]
    if hasattr(record, "retinopathy_grade"):
        parts.append(f"RG {record.retinopathy_grade}")
    return " · ".join(parts) + f"\nweight {weight:.2f}"


def expert_images_figure(picks: dict, datasets: dict, thumbnail: float = 1.6):
    """One row per task and expert (its images, highest weight first), one column per image."""
    rows = [(task, expert) for task, pick in picks.items() for expert in range(pick.weights.shape[1])]
    columns = max((len(top) for pick in picks.values() for top in pick.top), default=1)
    from matplotlib.figure import Figure  # here, not at import: matplotlib costs a script's start about 1 s
    figure = Figure(figsize=(thumbnail * columns + 1.6, (thumbnail + 0.45) * max(len(rows), 1)), layout="constrained")
    grid = figure.subplots(max(len(rows), 1), columns, squeeze=False)
    for axes_row, (task, expert) in zip(grid, rows):
        pick = picks[task]
        dataset = datasets[pick.side]
        for column, axes in enumerate(axes_row):
            axes.set_xticks([])
            axes.set_yticks([])
            if column < len(pick.top[expert]):
                index = pick.top[expert][column]
                axes.imshow(displayable(dataset[index]["image"]))
                axes.set_title(caption(dataset, index, float(pick.weights[index, expert])), fontsize=7)
            else:
                axes.axis("off")
        axes_row[0].set_ylabel(f"{task}\nexpert {expert}\n(first for {pick.chosen(expert)} of "
                               f"{pick.weights.shape[0]})", fontsize=8)
    return figure


def write_expert_images(model, datasets: dict, device, path, count: int = 4, amp: str = "off") -> Path:
    """Draw the multi-task model's expert_images_figure over ``datasets`` ({side: dataset}) into
    ``path`` (atomically); returns the path."""
    model.eval()
    picks = expert_images(lambda images, side: model(images, side=side), datasets, device, count, amp=amp)
    figure = expert_images_figure(picks, datasets)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=100))
    return path
