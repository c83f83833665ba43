"""Baseline DeepLabV3+: backbone (output stride 8 or 16; any of codebase.networks.backbones that supports it), ASPP, decoder, one output per lesion."""
import torch.nn.functional as F
from torch import nn

from codebase.data.idrid import LESIONS
from codebase.networks.backbones import make_backbone
from codebase.networks.layers import ASPP, DeepLabDecoder
from codebase.tasks import parse_tasks

TASKS = parse_tasks({f"segmentation_{lesion.lower()}": 1 for lesion in LESIONS})  # the five output channels


class DeepLabV3Plus(nn.Module):
    """images [B, 3, H, W] -> lesion logits [B, num_classes, H, W] (one sigmoid output per lesion).

    ``aspp_channels`` is the width of the ASPP output, ``decoder_channels`` that of the decoder's
    refinement convs (256 each in the paper; narrower makes a fast demo model).
    """

    def __init__(self, backbone="resnet50", output_stride=8, pretrained="none", num_classes=5, separable=False,
                 aspp_channels=256, decoder_channels=256):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"model.output_stride must be 8 or 16 for DeepLabV3+, got {output_stride}")
        self.backbone = make_backbone(backbone, output_stride, pretrained)
        self.aspp = ASPP(self.backbone.high_level_channels, aspp_channels, output_stride, separable=separable)
        self.decoder = DeepLabDecoder(self.backbone.low_level_channels, num_classes, aspp_channels,
                                      channels=decoder_channels, separable=separable)

    def forward(self, images):
        low_level, high_level = self.backbone(images)           # [B, Cl, H/4, W/4], [B, Ch, H/os, W/os]
        logits = self.decoder(self.aspp(high_level), low_level)  # [B, classes, H/4, W/4]
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)



def build_model(config):
    """The DeepLabV3+ a run's config describes (runs written before the ASPP and decoder widths were
    separate settings name one ``model.channels`` for both)."""
    model = dict(config["model"])
    if "channels" in model:
        model["aspp_channels"] = model["decoder_channels"] = model.pop("channels")
    return DeepLabV3Plus(**model)


def predict(model, images, side="all", dense=False):
    """The uniform prediction format: {"logits": {"segmentation_ma": [B, 1, H, W], ...}}."""
    if side == "grading":
        return {"logits": {}}
    logits = model(images)  # [B, 5, H, W]
    return {"logits": {task.name: logits[:, i:i + 1] for i, task in enumerate(TASKS)}}
