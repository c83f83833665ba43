"""Backbones: torchvision networks behind one contract, chosen by name from the registry `BACKBONES`.

The contract: ``make_backbone(name, output_stride, pretrained)`` returns a module whose forward
maps images [B, 3, H, W] to ``(low_level, high_level)``: low-level features at stride 4 (for
decoders) with ``low_level_channels`` channels, and high-level features at ``output_stride``
with ``high_level_channels``. ``pretrained`` is "imagenet" (torchvision's weights enum,
downloaded once into torch.hub's cache), "none" (random init), or the path of a local state
dict in torchvision's key format. Adding a backbone is one `register_backbone` call.

Shipped: ResNet 18-152 (output stride 8, 16 or 32) and MobileNetV3-Large (16 or 32), a light
backbone for fast runs.

``ResNetBackbone`` returns the layer1 output (stride 4) and the layer4 output
(stride 8, 16 or 32). Output strides below 32 trade the stride-2 convolutions of layer4 (and
layer3 for 8) for dilated convolutions. For Bottleneck blocks this builds what torchvision's
``replace_stride_with_dilation`` builds; torchvision refuses it for BasicBlock (resnet18/34), so
the dilation is applied here, to both block types, after construction.

Its parameter names are torchvision's without ``fc.*``, so torchvision checkpoints load as they are.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models

from codebase.errors import ProjectError

RESNETS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights),
    "resnet34": (models.resnet34, models.ResNet34_Weights),
    "resnet50": (models.resnet50, models.ResNet50_Weights),
    "resnet101": (models.resnet101, models.ResNet101_Weights),
    "resnet152": (models.resnet152, models.ResNet152_Weights),
}
# Output stride -> (layer3 dilated, layer4 dilated).
DILATED_LAYERS = {8: (True, True), 16: (False, True), 32: (False, False)}


class WeightsError(ProjectError, ValueError):
    """Backbone weights that cannot be obtained or do not fit; the message says what to do."""


def _dilate(layer, previous_dilation, dilation):
    """Trade ``layer``'s stride 2 for dilation, in place.

    The strided 3x3 conv keeps ``previous_dilation`` at stride 1 and every 3x3 conv after it gets
    ``dilation``: the output then equals the strided layer's output on every other pixel.
    """
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            strided = module.stride == (2, 2)
            module.stride = (1, 1)  # also the 1x1 downsample conv
            if module.kernel_size == (3, 3):
                rate = previous_dilation if strided else dilation
                module.dilation = module.padding = (rate, rate)


def _describe_keys(keys, limit=10):
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} [{', '.join(keys[:limit])}{more}]"


def imagenet_state_dict(name):
    """torchvision's default ImageNet weights for backbone ``name``, downloaded once into torch.hub's cache.

    That is IMAGENET1K_V2 for resnet50/101/152 and IMAGENET1K_V1 for resnet18/34 and mobilenet_v3_large.
    """
    weights = BACKBONES[name].weights.DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as error:  # network, HTTP, hash or unpickling failures all end here
        raise WeightsError(
            f"pretrained='imagenet': could not get torchvision's {name} weights ({weights}): {error}. "
            f"torchvision downloads them from {weights.url} to {cached}. Without network, copy that "
            f"file there, or set pretrained='none' (random init), or set pretrained to the path of a "
            f"local state dict in torchvision's format."
        ) from error


def load_state_dict_file(path):
    """Read a torchvision-format state dict (bare, or under "state_dict" / "model") with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"pretrained={str(path)!r}: no such file; expected 'imagenet', 'none' or the path of a "
            f"local state dict in torchvision's format")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the weights-only unpickler fails in many ways on foreign files
        raise WeightsError(f"{path}: not a weights-only torch checkpoint (torch.load failed: {error})") from error
    for key in ("state_dict", "model"):
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
            break
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise WeightsError(f"{path}: expected a dict of parameter name -> tensor (torchvision's format)")
    return content


class ResNetBackbone(nn.Module):
    """torchvision ResNet returning (low_level at stride 4, high_level at ``output_stride``).

    ``pretrained``: "imagenet" (torchvision weights enum, cached under torch.hub.get_dir()),
    "none" (random init), or the path of a local state dict in torchvision's key format
    (``fc.*`` entries are ignored).
    """

    def __init__(self, name="resnet50", output_stride=16, pretrained="none"):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone {name!r} is not one of {', '.join(RESNETS)}")
        if output_stride not in DILATED_LAYERS:
            raise ValueError(f"output_stride {output_stride!r} is not one of {', '.join(map(str, DILATED_LAYERS))}")
        resnet = RESNETS[name][0](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

        dilation = 1
        for layer, dilated in zip((self.layer3, self.layer4), DILATED_LAYERS[output_stride]):
            if dilated:
                _dilate(layer, dilation, dilation * 2)
                dilation *= 2

        self.name = name
        self.output_stride = output_stride
        expansion = resnet.layer1[0].expansion  # 1 for BasicBlock, 4 for Bottleneck
        self.low_level_channels = 64 * expansion
        self.high_level_channels = 512 * expansion
        load_pretrained(self, pretrained, classifier_prefix="fc.")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B, 64, H/4, W/4]
        low_level = self.layer1(x)  # [B, Cl, H/4, W/4]
        high_level = self.layer4(self.layer3(self.layer2(low_level)))  # [B, Ch, H/os, W/os]
        return low_level, high_level


class MobileNetV3Backbone(nn.Module):
    """torchvision MobileNetV3-Large returning (features[:4] at stride 4, features[4:] at ``output_stride``).

    Output stride 16 uses torchvision's dilated form of the last stage (as its DeepLabV3 and LR-ASPP
    segmentation models do). Parameter names are torchvision's without ``classifier.*``.
    """

    def __init__(self, name="mobilenet_v3_large", output_stride=16, pretrained="none"):
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride {output_stride!r}: {name} supports 16 or 32")
        self.features = models.mobilenet_v3_large(weights=None, dilated=output_stride == 16).features
        self.name, self.output_stride = name, output_stride
        self.low_level_channels = self.features[3].out_channels  # 24
        self.high_level_channels = self.features[-1].out_channels  # 960
        load_pretrained(self, pretrained, classifier_prefix="classifier.")

    def forward(self, x):
        low_level = self.features[:4](x)  # [B, 24, H/4, W/4]
        high_level = self.features[4:](low_level)  # [B, 960, H/os, W/os]
        return low_level, high_level


def load_pretrained(backbone, pretrained, classifier_prefix):
    """Load "imagenet" or a local state dict into ``backbone`` ("none": keep the random init);
    entries under ``classifier_prefix`` (the ImageNet classifier) are ignored. WeightsError when
    the file does not fit, naming the missing, unexpected and mismatched keys."""
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(f"pretrained {pretrained!r} is not 'imagenet', 'none' or a path to a state dict")
    source = os.fspath(pretrained)
    if source == "none":
        return
    state = imagenet_state_dict(backbone.name) if source == "imagenet" else load_state_dict_file(source)
    state = {key: value for key, value in state.items() if not key.startswith(classifier_prefix)}
    own = backbone.state_dict()
    missing = [key for key in own if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in own]
    mismatched = [f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
                  for key, value in state.items() if key in own and value.shape != own[key].shape]
    problems = [f"{kind} {_describe_keys(keys)}" for kind, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (file vs model)", mismatched))
        if keys]
    if problems:
        raise WeightsError(f"pretrained={source!r} does not fit {backbone.name} "
                           f"(torchvision key format expected): {'; '.join(problems)}")
    backbone.load_state_dict(state)


@dataclass(frozen=True)
class BackboneEntry:
    """A registry entry: build(name, output_stride, pretrained) -> backbone; its output strides;
    its torchvision ImageNet weights enum (for pretrained="imagenet")."""

    build: Callable
    output_strides: tuple
    weights: object


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name, build, output_strides, weights=None):
    BACKBONES[name] = BackboneEntry(build, tuple(output_strides), weights)


def make_backbone(name, output_stride, pretrained="none"):
    """The backbone registered as ``name``, with high-level features at ``output_stride``."""
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r} is not one of {', '.join(BACKBONES)}")
    entry = BACKBONES[name]
    if output_stride not in entry.output_strides:
        raise ValueError(f"backbone {name} supports output stride {' or '.join(map(str, entry.output_strides))}, "
                         f"not {output_stride!r}")
    return entry.build(name, output_stride, pretrained)


for _name, (_, _weights) in RESNETS.items():
    register_backbone(_name, ResNetBackbone, tuple(DILATED_LAYERS), _weights)
register_backbone("mobilenet_v3_large", MobileNetV3Backbone, (16, 32), models.MobileNet_V3_Large_Weights)
