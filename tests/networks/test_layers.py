"""Shapes of the shared layers and the two baseline models, per backbone family and output stride."""
import pytest
import torch

from classifier.model import GradingClassifier
from codebase.networks.backbones import ResNetBackbone
from codebase.networks.layers import (
    ASPP,
    ClassificationHead,
    DeepLabDecoder,
    DepthwiseSeparableConv2d,
    conv_bn_relu,
)
from segmentation.model import DeepLabV3Plus


def test_separable_switch_changes_the_conv_not_the_shape():
    x = torch.randn(2, 16, 20, 30)
    full, separable = conv_bn_relu(16, 32, 3, dilation=2), conv_bn_relu(16, 32, 3, dilation=2, separable=True)
    assert isinstance(separable[0], DepthwiseSeparableConv2d) and isinstance(full[0], torch.nn.Conv2d)
    assert full(x).shape == separable(x).shape == (2, 32, 20, 30)
    params = lambda m: sum(p.numel() for p in m.parameters())
    assert params(separable) < params(full) / 4
    assert isinstance(conv_bn_relu(16, 32, 1, separable=True)[0], torch.nn.Conv2d)  # 1x1 stays full


@pytest.mark.parametrize("output_stride,rates", [(8, (12, 24, 36)), (16, (6, 12, 18))])
def test_aspp_rates_follow_the_output_stride(output_stride, rates):
    aspp = ASPP(64, 32, output_stride)
    assert aspp.rates == rates
    assert [b[0].dilation[0] for b in aspp.branches[1:]] == list(rates)
    with pytest.raises(ValueError, match="output_stride"):
        ASPP(64, 32, 12)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])  # basic and bottleneck blocks
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("separable", [False, True])
def test_aspp_and_decoder_shapes(name, output_stride, separable):
    backbone = ResNetBackbone(name, output_stride=output_stride).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        low, high = backbone(images)
        aspp = ASPP(backbone.high_level_channels, 256, output_stride, separable).eval()
        context = aspp(high)
        decoder = DeepLabDecoder(backbone.low_level_channels, 5, 256, separable=separable).eval()
        logits = decoder(context, low)
    assert high.shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert context.shape == (1, 256, *high.shape[-2:])
    assert logits.shape == (1, 5, 16, 24)


def test_aspp_trains_on_a_batch_of_one():
    ASPP(32, 16, 16).train()(torch.randn(1, 32, 5, 7)).sum().backward()


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplab_outputs_one_map_per_lesion_at_input_size(output_stride):
    model = DeepLabV3Plus("resnet18", output_stride).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 70, 100)).shape == (2, 5, 70, 100)
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3Plus("resnet18", 32)


def test_classifier_has_an_rg_and_an_mer_head():
    model = GradingClassifier("resnet18").eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 96))
    assert out["classification_rg"].shape == (3, 5) and out["classification_mer"].shape == (3, 3)
    head = ClassificationHead(512, 4, conv=True).eval()
    assert head(torch.randn(2, 512, 3, 4)).shape == (2, 4)
