"""Baseline grading classifier: backbone (any of codebase.networks.backbones), global pooling, an RG head and an MER head."""
from torch import nn

from codebase.networks.backbones import make_backbone
from codebase.networks.layers import ClassificationHead
from codebase.tasks import parse_tasks

TASKS = parse_tasks({"classification_rg": 5, "classification_mer": 3})


class GradingClassifier(nn.Module):
    """images [B, 3, H, W] -> {"classification_rg": [B, 5], "classification_mer": [B, 3]}."""

    def __init__(self, backbone="resnet50", pretrained="none", rg_classes=5, mer_classes=3, hidden=256,
                 dropout=0.2):
        super().__init__()
        self.backbone = make_backbone(backbone, 32, pretrained)
        channels = self.backbone.high_level_channels
        self.heads = nn.ModuleDict({
            "classification_rg": ClassificationHead(channels, rg_classes, hidden, conv=False, dropout=dropout),
            "classification_mer": ClassificationHead(channels, mer_classes, hidden, conv=False, dropout=dropout),
        })

    def forward(self, images):
        _, high_level = self.backbone(images)  # [B, C, H/32, W/32]
        return {task: head(high_level) for task, head in self.heads.items()}


def build_model(config):
    """The classifier a run's config describes."""
    model = config["model"]
    return GradingClassifier(model["backbone"], model["pretrained"], hidden=model["head_hidden"],
                             dropout=model["dropout"])


def predict(model, images, side="all", dense=False):
    """The uniform prediction format: {"logits": {task: [B, classes]}} (nothing on the segmentation side)."""
    return {"logits": {} if side == "segmentation" else model(images)}
