import urllib.error

import pytest
import torch
from torchvision import models

from codebase.networks.backbones import (
    BACKBONES,
    ResNetBackbone,
    WeightsError,
    make_backbone,
    register_backbone,
)
from segmentation.model import DeepLabV3Plus

IMAGE = (64, 96)  # (height, width)


def features(backbone, x):
    with torch.no_grad():
        return backbone.eval()(x)


@pytest.mark.parametrize("name, low_channels, high_channels", [("resnet18", 64, 512), ("resnet50", 256, 2048)])
def test_shapes_and_dilation_at_each_output_stride(name, low_channels, high_channels):
    x = torch.randn(2, 3, *IMAGE)
    reference = ResNetBackbone(name, output_stride=32)
    low32, high32 = features(reference, x)
    for output_stride in (8, 16, 32):
        backbone = ResNetBackbone(name, output_stride=output_stride)
        backbone.load_state_dict(reference.state_dict())
        low, high = features(backbone, x)
        assert (backbone.low_level_channels, backbone.high_level_channels) == (low_channels, high_channels)
        assert backbone.output_stride == output_stride
        assert low.shape == (2, low_channels, IMAGE[0] // 4, IMAGE[1] // 4)
        assert high.shape == (2, high_channels, IMAGE[0] // output_stride, IMAGE[1] // output_stride)
        # Dilation instead of stride keeps the function: every (32/os)-th pixel is the OS-32 output.
        # Strided and dilated convolutions sum in different orders: float32 rounding differs slightly.
        step = 32 // output_stride
        torch.testing.assert_close(high[..., ::step, ::step], high32, atol=5e-4, rtol=1e-3)
        torch.testing.assert_close(low, low32)


def test_bottleneck_dilation_matches_torchvision():
    for output_stride, replace in ((8, [False, True, True]), (16, [False, False, True])):
        torchvision_model = models.resnet50(weights=None, replace_stride_with_dilation=replace)
        ours = ResNetBackbone("resnet50", output_stride=output_stride)

        def geometry(model):
            return {name: (m.stride, m.dilation, m.padding)
                    for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}

        assert geometry(ours) == geometry(torchvision_model)


def test_bad_settings_name_the_allowed_values():
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50, resnet101, resnet152"):
        ResNetBackbone("resnet42")
    with pytest.raises(ValueError, match="output_stride 4 is not one of 8, 16, 32"):
        ResNetBackbone("resnet18", output_stride=4)


def test_local_state_dict_round_trip(tmp_path):
    source = models.resnet18(weights=None)
    torch.nn.init.normal_(source.layer4[1].conv2.weight)
    bare, nested = tmp_path / "bare.pth", tmp_path / "nested.pth"
    torch.save(source.state_dict(), bare)  # includes fc.*, which is ignored
    torch.save({"epoch": 3, "state_dict": source.state_dict()}, nested)
    legacy = tmp_path / "legacy.pth"  # old torchvision files have no BatchNorm num_batches_tracked
    torch.save({"model": {k: v for k, v in source.state_dict().items() if "num_batches" not in k}}, legacy)
    for path in (bare, nested, legacy, str(bare)):
        backbone = ResNetBackbone("resnet18", output_stride=16, pretrained=path)
        torch.testing.assert_close(backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
        torch.testing.assert_close(backbone.bn1.running_var, source.bn1.running_var)


def test_local_state_dict_with_wrong_keys_lists_them(tmp_path):
    state = models.resnet18(weights=None).state_dict()
    state["extra.weight"] = state.pop("layer2.0.conv1.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"missing keys 1 \[layer2.0.conv1.weight\]; unexpected keys 1 \[extra.weight\]"):
        ResNetBackbone("resnet18", pretrained=path)


def test_local_state_dict_of_another_architecture(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"does not fit resnet18 \(torchvision key format expected\): unexpected keys 96 \[layer1.2"):
        ResNetBackbone("resnet18", pretrained=path)
    torch.save(models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"shape mismatches \(file vs model\) \d+ \[layer1.0.conv1.weight \(64, 64, 1, 1\) vs \(64, 64, 3, 3\)"):
        ResNetBackbone("resnet34", pretrained=path)


def test_unreadable_or_missing_weight_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth: not a weights-only torch checkpoint"):
        ResNetBackbone("resnet18", pretrained=garbage)
    with pytest.raises(WeightsError, match="absent.pth'?: no such file"):
        ResNetBackbone("resnet18", pretrained=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="pretrained None"):
        ResNetBackbone("resnet18", pretrained=None)


def test_imagenet_without_network_says_what_to_do(tmp_path, monkeypatch):
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    expected_file = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError) as raised:
        ResNetBackbone("resnet18", pretrained="imagenet")
    message = str(raised.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(expected_file) in message
    assert "pretrained='none'" in message and "path of a local state dict" in message
    assert "network unreachable" in message


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large"])
@pytest.mark.parametrize("output_stride", [16, 32])
def test_every_registered_family_keeps_the_feature_contract(name, output_stride):
    """Low-level features at stride 4, high-level at the output stride, channel counts as announced."""
    backbone = make_backbone(name, output_stride)
    low, high = features(backbone, torch.randn(2, 3, *IMAGE))
    assert low.shape == (2, backbone.low_level_channels, IMAGE[0] // 4, IMAGE[1] // 4)
    assert high.shape == (2, backbone.high_level_channels, IMAGE[0] // output_stride, IMAGE[1] // output_stride)
    assert backbone.output_stride == output_stride


def test_mobilenet_refuses_output_stride_8_and_loads_torchvision_weights(tmp_path):
    with pytest.raises(ValueError, match="supports output stride 16 or 32"):
        make_backbone("mobilenet_v3_large", 8)
    source = models.mobilenet_v3_large(weights=None)
    torch.nn.init.normal_(source.features[16][0].weight)
    torch.save(source.state_dict(), tmp_path / "mobilenet.pth")  # with classifier.*, which is ignored
    backbone = make_backbone("mobilenet_v3_large", 16, pretrained=tmp_path / "mobilenet.pth")
    torch.testing.assert_close(backbone.features[16][0].weight, source.features[16][0].weight)
    torch.save(models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="does not fit mobilenet_v3_large"):
        make_backbone("mobilenet_v3_large", 32, pretrained=tmp_path / "resnet.pth")


class TinyBackbone(torch.nn.Module):
    """Two strided convs: the smallest network that meets the contract (stride 4 and stride 8)."""

    def __init__(self, name, output_stride, pretrained):
        super().__init__()
        self.name, self.output_stride = name, output_stride
        self.low_level_channels, self.high_level_channels = 8, 16
        self.low = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.high = torch.nn.Conv2d(8, 16, 2, stride=2)

    def forward(self, x):
        low = self.low(x)
        return low, self.high(low)


def test_a_new_backbone_is_one_registry_entry(monkeypatch):
    monkeypatch.setattr("codebase.networks.backbones.BACKBONES", dict(BACKBONES))
    register_backbone("tiny", TinyBackbone, output_strides=(8,))
    model = DeepLabV3Plus("tiny", output_stride=8, aspp_channels=8, decoder_channels=8)
    assert model(torch.randn(1, 3, *IMAGE)).shape == (1, 5, *IMAGE)
    with pytest.raises(ValueError, match="supports output stride 8"):
        make_backbone("tiny", 16)
