"""A trained run folder back as a model: rebuild it from config.json, load model.pth.

Used by predict.py, compare_models.py and the notebooks. Works with a run of any of the three
train scripts; what kind a run is follows from its config (the multi-task model has
``model.task_specs``, DeepLabV3+ ``model.output_stride``, the classifier neither).
Every model is seen through the same ``predict(images)`` function, returning
``{"logits": {task: tensor}, "routing": {task: Routing}}`` (routing for the multi-task model only),
with task names as in the multi-task model (``classification_rg``, ``segmentation_od``, ...).
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from classifier.model import GradingClassifier
from codebase.harness import CONFIG_FILE, MODEL_FILE
from codebase.idrid import LESIONS, NUM_MER_CLASSES, NUM_RG_CLASSES
from codebase.model import MultiTaskModel
from segmentation.model import DeepLabV3Plus

KINDS = ("classifier", "segmentation", "multitask")
LESION_TASKS = tuple(f"segmentation_{lesion.lower()}" for lesion in LESIONS)


def run_kind(config):
    model = config.get("model", {})
    if "task_specs" in model:
        return "multitask"
    return "segmentation" if "output_stride" in model else "classifier"


def build_model(config, pretrained=None):
    """The model a run's config describes; ``pretrained`` overrides model.pretrained."""
    model = dict(config["model"])
    if pretrained is not None:
        model["pretrained"] = pretrained
    kind = run_kind(config)
    if kind == "multitask":
        return MultiTaskModel(model["task_specs"], model["backbone"], model["num_experts"], model["pretrained"],
                              top_p=config["routing"]["top_p"], aspp_channels=model["aspp_channels"],
                              decoder_channels=model["decoder_channels"], head_hidden=model["head_hidden"],
                              gate_noise=config["routing"].get("noise", False))
    if kind == "segmentation":
        return DeepLabV3Plus(**model)
    return GradingClassifier(model["backbone"], model["pretrained"], hidden=model["head_hidden"],
                             dropout=model["dropout"])


@dataclass
class TrainedRun:
    folder: Path
    kind: str
    config: dict
    model: torch.nn.Module

    @property
    def task_specs(self):
        """{task: outputs} this run predicts."""
        if self.kind == "multitask":
            return dict(self.model.task_specs)
        if self.kind == "segmentation":
            return {task: 1 for task in LESION_TASKS}
        return {"classification_rg": NUM_RG_CLASSES, "classification_mer": NUM_MER_CLASSES}

    def tasks(self, kind):
        """This run's task names of one kind ("classification" or "segmentation")."""
        return [task for task in self.task_specs if task.startswith(kind + "_")]

    def predict(self, images, side="all", dense=None):
        """images [B, 3, H, W] -> {"logits": {task: ...}, "routing": {...}} for the tasks on ``side``."""
        if self.kind == "multitask":
            return self.model(images, side=side, dense=dense)
        if self.kind == "segmentation":
            if side == "classification":
                return {"logits": {}}
            logits = self.model(images)  # [B, 5, H, W]
            return {"logits": {task: logits[:, i:i + 1] for i, task in enumerate(LESION_TASKS)}}
        return {"logits": {} if side == "segmentation" else self.model(images)}


def load_run(folder, device="cpu"):
    """The run in ``folder`` (saved/<name>/) with its final weights, in eval mode on ``device``."""
    folder = Path(folder)
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: expected a finished run folder written by "
                                    "train_classifier.py, train_segmentation.py or train_mlt_model.py")
    config = json.loads((folder / CONFIG_FILE).read_text())
    model = build_model(config, pretrained="none")  # the trained weights replace any pretrained ones
    model.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True))
    if run_kind(config) == "multitask":
        model.set_routing(False)
    return TrainedRun(folder, run_kind(config), config, model.to(device).eval())
