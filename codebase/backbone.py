"""The one ResNet wrapper: torchvision ResNet 18-152 as a two-level feature extractor.

``ResNetBackbone`` returns the layer1 output (stride 4, for decoders) and the layer4 output
(stride 8, 16 or 32). Output strides below 32 trade the stride-2 convolutions of layer4 (and
layer3 for 8) for dilated convolutions. For Bottleneck blocks this builds what torchvision's
``replace_stride_with_dilation`` builds; torchvision refuses it for BasicBlock (resnet18/34), so
the dilation is applied here, to both block types, after construction.

Its parameter names are torchvision's without ``fc.*``, so torchvision checkpoints load as they are.
"""
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models

ARCHITECTURES = {
    "resnet18": (models.resnet18, models.ResNet18_Weights),
    "resnet34": (models.resnet34, models.ResNet34_Weights),
    "resnet50": (models.resnet50, models.ResNet50_Weights),
    "resnet101": (models.resnet101, models.ResNet101_Weights),
    "resnet152": (models.resnet152, models.ResNet152_Weights),
}
# Output stride -> (layer3 dilated, layer4 dilated).
DILATED_LAYERS = {8: (True, True), 16: (False, True), 32: (False, False)}


class WeightsError(ValueError):
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
    """torchvision's default ImageNet weights for ``name``, downloaded once into torch.hub's cache.

    That is IMAGENET1K_V2 for resnet50/101/152 and IMAGENET1K_V1 for resnet18/34.
    """
    weights = ARCHITECTURES[name][1].DEFAULT
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
        if name not in ARCHITECTURES:
            raise ValueError(f"backbone {name!r} is not one of {', '.join(ARCHITECTURES)}")
        if output_stride not in DILATED_LAYERS:
            raise ValueError(f"output_stride {output_stride!r} is not one of {', '.join(map(str, DILATED_LAYERS))}")
        resnet = ARCHITECTURES[name][0](weights=None)
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
        self._load_pretrained(pretrained)

    def _load_pretrained(self, pretrained):
        if not isinstance(pretrained, (str, os.PathLike)):
            raise ValueError(f"pretrained {pretrained!r} is not 'imagenet', 'none' or a path to a state dict")
        source = os.fspath(pretrained)
        if source == "none":
            return
        state = imagenet_state_dict(self.name) if source == "imagenet" else load_state_dict_file(source)
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        own = self.state_dict()
        missing = [key for key in own if key not in state and not key.endswith("num_batches_tracked")]
        unexpected = [key for key in state if key not in own]
        mismatched = [f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
                      for key, value in state.items() if key in own and value.shape != own[key].shape]
        problems = [f"{kind} {_describe_keys(keys)}" for kind, keys in (
            ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (file vs model)", mismatched))
            if keys]
        if problems:
            raise WeightsError(f"pretrained={source!r} does not fit {self.name} "
                               f"(torchvision key format expected): {'; '.join(problems)}")
        self.load_state_dict(state)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B, 64, H/4, W/4]
        low_level = self.layer1(x)  # [B, Cl, H/4, W/4]
        high_level = self.layer4(self.layer3(self.layer2(low_level)))  # [B, Ch, H/os, W/os]
        return low_level, high_level
