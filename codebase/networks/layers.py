"""Layers shared by the three models: separable convs, ASPP, the DeepLabV3+ decoder, heads, the gate.

Every k>1 convolution can be built full or depthwise-separable (``separable=True``); 1x1
convolutions are always full. Each block is defined once here and composed elsewhere.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


class DepthwiseSeparableConv2d(nn.Module):
    """A k x k depthwise convolution followed by a 1x1 pointwise one; spatial size is kept."""

    def __init__(self, in_channels, out_channels, kernel_size=3, dilation=1, bias=False):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding,
                                   dilation=dilation, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def conv_bn_relu(in_channels, out_channels, kernel_size, dilation=1, separable=False):
    """Conv (full, or depthwise-separable when ``separable`` and k > 1), BatchNorm, ReLU."""
    if separable and kernel_size > 1:
        conv = DepthwiseSeparableConv2d(in_channels, out_channels, kernel_size, dilation)
    else:
        padding = dilation * (kernel_size - 1) // 2
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding,
                         dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: [B, C_in, h, w] -> [B, out_channels, h, w].

    Five parallel branches (1x1, three atrous 3x3 at rates set by the output stride, image
    pooling), concatenated and projected by a 1x1 conv. The pooling branch has no BatchNorm so a
    batch of one image trains too.
    """

    def __init__(self, in_channels, out_channels=256, output_stride=16, separable=False, dropout=0.1):
        super().__init__()
        if output_stride not in ASPP_RATES:
            raise ValueError(f"ASPP output_stride must be one of {sorted(ASPP_RATES)}, got {output_stride}")
        self.rates = ASPP_RATES[output_stride]
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, out_channels, 1)]
            + [conv_bn_relu(in_channels, out_channels, 3, rate, separable) for rate in self.rates])
        self.image_pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(conv_bn_relu(5 * out_channels, out_channels, 1), nn.Dropout(dropout))

    def forward(self, x):
        pooled = self.image_pooling(x).expand(-1, -1, *x.shape[-2:])  # [B, out, 1, 1] -> [B, out, h, w]
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLabDecoder(nn.Module):
    """DeepLabV3+ decoder: (ASPP output, stride-4 features) -> logits [B, num_classes, H/4, W/4].

    The ASPP output is upsampled to the low-level size (skipped when the caller already did it,
    which lets several decoders share one upsampling), concatenated with a 1x1 projection of the
    low-level features, refined by two 3x3 convs and classified by a 1x1 conv. The classifier's
    bias starts at the logit of ``prior`` (as for focal-loss detectors): lesions are rare, so the
    untrained decoder predicts "background" everywhere instead of p = 0.5, which keeps early
    training stable and thresholded predictions meaningful from the first epochs.
    """

    def __init__(self, low_level_channels, num_classes, in_channels=256, low_level_projection=48,
                 channels=256, separable=False, prior=0.01):
        super().__init__()
        self.project_low = conv_bn_relu(low_level_channels, low_level_projection, 1)
        self.refine = nn.Sequential(
            conv_bn_relu(in_channels + low_level_projection, channels, 3, separable=separable),
            conv_bn_relu(channels, channels, 3, separable=separable))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.constant_(self.classifier.bias, math.log(prior / (1 - prior)))

    def forward(self, context, low_level):
        if context.shape[-2:] != low_level.shape[-2:]:
            context = F.interpolate(context, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        features = torch.cat([context, self.project_low(low_level)], dim=1)
        return self.classifier(self.refine(features))


class ClassificationHead(nn.Module):
    """Feature map [B, C, h, w] -> logits [B, num_classes].

    With ``conv=True`` a depthwise-separable 3x3 conv maps C to ``hidden`` channels first (the
    multi-task model's experts); then global average pooling and a two-layer MLP.
    """

    def __init__(self, in_channels, num_classes, hidden=256, conv=True, dropout=0.2):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, hidden, 3, separable=True) if conv else nn.Identity()
        features = hidden if conv else in_channels
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.mlp(self.conv(x).mean(dim=(2, 3)))


ROUTERS = ("linear", "cosine")


class Gate(nn.Module):
    """Router scores: gate input [N, C] -> expert logits [N, E]; softmax gives routing weights.

    N is the batch's images, or with region routing its grid cells (codebase/networks/regions.py).
    ``router``: "linear", a two-layer MLP whose last layer gives the logits; "cosine" (X-MoE, Chi et
    al. 2022; GMoE), the MLP projects to ``cosine_dim`` (16) features and the logits are the cosine
    similarities between that projection and E learned expert embeddings divided by a learned
    temperature tau = exp(log_temperature), clamped to [0.01, 1] (it starts at 0.07): every logit is
    in [-1 / tau, 1 / tau], at most 100 in size, so no expert's score grows without bound with the
    input's norm.

    With ``noise`` (noisy gating, Shazeer et al. 2017), training adds Gaussian noise to the logits
    with a learned per-image, per-expert scale softplus(x W_noise), which starts at softplus(0) = 0.69
    (W_noise zero): the router keeps trying experts it does not prefer yet. Evaluation is noise-free.

    ``selection_bias`` [E] (a buffer, saved with the weights) is the per-expert bias that
    loss-free load balancing adds to the logits when the experts are chosen
    (codebase/networks/routing.py `route`, `update_selection_bias`); zero until training moves it.
    """

    TEMPERATURE_RANGE = (0.01, 1.0)

    def __init__(self, in_channels, num_experts, hidden=128, noise=False, router="linear", cosine_dim=16):
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {router!r}")
        self.router = router
        out = num_experts if router == "linear" else cosine_dim
        self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))
        if router == "cosine":
            self.expert_embeddings = nn.Parameter(torch.randn(num_experts, cosine_dim) / math.sqrt(cosine_dim))
            self.log_temperature = nn.Parameter(torch.tensor(math.log(0.07)))
        self.noise = nn.Linear(in_channels, num_experts) if noise else None
        if noise:
            nn.init.zeros_(self.noise.weight)
            nn.init.zeros_(self.noise.bias)
        self.register_buffer("selection_bias", torch.zeros(num_experts))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before the selection bias existed chose experts without one: a zero bias.
        state_dict.setdefault(prefix + "selection_bias", torch.zeros_like(self.selection_bias))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def temperature(self):
        return self.log_temperature.exp().clamp(*self.TEMPERATURE_RANGE)

    def forward(self, features):
        logits = self.net(features)  # [N, E], or [N, cosine_dim] for the cosine router
        if self.router == "cosine":
            similarity = F.normalize(logits, dim=-1) @ F.normalize(self.expert_embeddings, dim=-1).t()  # [N, E]
            logits = similarity / self.temperature
        if self.noise is not None and self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(features))
        return logits
