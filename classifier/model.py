"""Baseline grading classifier: ResNet backbone, global pooling, an RG head and an MER head."""
from torch import nn

from codebase.backbone import ResNetBackbone
from codebase.layers import ClassificationHead


class GradingClassifier(nn.Module):
    """images [B, 3, H, W] -> {"classification_rg": [B, 5], "classification_mer": [B, 3]}."""

    def __init__(self, backbone="resnet50", pretrained="none", rg_classes=5, mer_classes=3, hidden=256,
                 dropout=0.2):
        super().__init__()
        self.backbone = ResNetBackbone(backbone, output_stride=32, pretrained=pretrained)
        channels = self.backbone.high_level_channels
        self.heads = nn.ModuleDict({
            "classification_rg": ClassificationHead(channels, rg_classes, hidden, conv=False, dropout=dropout),
            "classification_mer": ClassificationHead(channels, mer_classes, hidden, conv=False, dropout=dropout),
        })

    def forward(self, images):
        _, high_level = self.backbone(images)  # [B, C, H/32, W/32]
        return {task: head(high_level) for task, head in self.heads.items()}
