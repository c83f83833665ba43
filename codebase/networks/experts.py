"""A task's experts and how they run: sparse dispatch, or all experts as one grouped computation.

`ExpertBank.mix` takes the routing mixture and the dispatch plan (codebase/networks/routing.py):

- Some expert skipped or run on a subset of images (top-p): each expert that any image selected
  runs once on exactly those images, and its weighted output is added into their rows. An expert
  no image selected is not called at all.
- Every expert on every image (warm-up, or p = 1): on CUDA the experts run as one computation.
  Their weights are concatenated on the fly (parameters stay per expert, gradients flow through the
  concatenation) and applied with grouped convolutions and batched matrix products, so E experts
  cost a few large kernels instead of E chains of small ones. BatchNorm statistics are computed
  per expert exactly as in the sequential form and written back to each expert's buffers. On the
  CPU, where oneDNN's grouped kernels are slower than separate calls, the experts run one after
  another on the whole batch (``ExpertBank.grouped`` forces either form).
"""
import torch
import torch.nn.functional as F
from torch import nn

from codebase.networks.layers import (
    ClassificationHead,
    DeepLabDecoder,
    DepthwiseSeparableConv2d,
)


def _cat(tensors):
    return torch.cat(list(tensors), dim=0)


def _grouped_batch_norm(x, norms):
    """BatchNorm over [B, G*C, ...] where channel block g belongs to ``norms[g]`` (G BatchNorm2d)."""
    first = norms[0]
    weight, bias = _cat(n.weight for n in norms), _cat(n.bias for n in norms)
    running_mean, running_var = _cat(n.running_mean for n in norms), _cat(n.running_var for n in norms)
    if not first.training:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, first.eps)
    out = F.batch_norm(x, running_mean, running_var, weight, bias, True, first.momentum, first.eps)
    with torch.no_grad():  # F.batch_norm updated the concatenated copies; hand them back
        for norm, mean, var in zip(norms, running_mean.chunk(len(norms)), running_var.chunk(len(norms))):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.num_batches_tracked += 1
    return out


def _grouped_separable_block(x, blocks):
    """G conv_bn_relu(separable) blocks, block g on channel block g of x: [B, G*Cin, h, w] -> [B, G*Cout, h, w]."""
    convs = [block[0] for block in blocks]
    depthwise, pointwise = [c.depthwise for c in convs], [c.pointwise for c in convs]
    dw = depthwise[0]
    x = F.conv2d(x, _cat(m.weight for m in depthwise), padding=dw.padding, dilation=dw.dilation,
                 groups=x.shape[1])
    x = F.conv2d(x, _cat(m.weight for m in pointwise), groups=len(blocks))
    return F.relu(_grouped_batch_norm(x, [block[1] for block in blocks]))


def _grouped_conv_bn_relu_1x1(x, blocks):
    """G 1x1 conv_bn_relu blocks on one shared input: [B, Cin, h, w] -> [B, G*Cout, h, w]."""
    x = F.conv2d(x, _cat(block[0].weight for block in blocks))
    return F.relu(_grouped_batch_norm(x, [block[1] for block in blocks]))


def _grouped_linear(x, linears):
    """G Linear layers, layer g on x[:, g]: [B, G, Cin] -> [B, G, Cout] (one batched matmul)."""
    weight = torch.stack([m.weight for m in linears])  # [G, Cout, Cin]
    bias = torch.stack([m.bias for m in linears])      # [G, Cout]
    return torch.einsum("bgi,goi->bgo", x, weight) + bias


def grouped_decoders(decoders, context, low_level):
    """E DeepLab decoders on one shared input as one computation -> [B, E, classes, h, w].

    context [B, Cc, h, w] (already at the low-level size), low_level [B, Cl, h, w].
    """
    count, batch, height, width = len(decoders), context.shape[0], *low_level.shape[-2:]
    low = _grouped_conv_bn_relu_1x1(low_level, [d.project_low for d in decoders])  # [B, E*48, h, w]
    # [context, low_0, context, low_1, ...]: each expert's input as one channel block. One 4-D cat keeps the
    # inputs' memory format (a channels_last model stays channels_last, no layout copies).
    x = torch.cat([part for low_e in low.chunk(count, dim=1) for part in (context, low_e)], dim=1)
    for stage in range(len(decoders[0].refine)):
        x = _grouped_separable_block(x, [d.refine[stage] for d in decoders])  # [B, E*256, h, w]
    classifiers = [d.classifier for d in decoders]
    x = F.conv2d(x, _cat(c.weight for c in classifiers), _cat(c.bias for c in classifiers), groups=count)
    return x.view(batch, count, -1, height, width)


def grouped_classification_heads(heads, features):
    """E classification heads on one shared feature map as one computation -> [B, E, classes].

    The depthwise conv runs once with E filters per input channel (channel c*E + e is expert e's),
    a reorder makes each expert's channels contiguous, then one grouped pointwise conv.
    """
    count, batch, channels = len(heads), features.shape[0], features.shape[1]
    convs = [h.conv[0] for h in heads]
    depthwise = convs[0].depthwise
    dw_weight = torch.stack([c.depthwise.weight for c in convs], dim=1).flatten(0, 1)  # [C*E, 1, k, k]
    x = F.conv2d(features, dw_weight, padding=depthwise.padding, dilation=depthwise.dilation, groups=channels)
    x = x.unflatten(1, (channels, count)).transpose(1, 2).flatten(1, 2)  # [B, E*C, h, w], expert-major
    x = F.conv2d(x, _cat(c.pointwise.weight for c in convs), groups=count)
    x = F.relu(_grouped_batch_norm(x, [h.conv[1] for h in heads]))
    pooled = x.mean(dim=(2, 3)).view(batch, count, -1)  # [B, E, hidden]
    hidden = F.relu(_grouped_linear(pooled, [h.mlp[0] for h in heads]))
    hidden = F.dropout(hidden, heads[0].mlp[2].p, heads[0].training)
    return _grouped_linear(hidden, [h.mlp[3] for h in heads])


def _against(weights, out, lead=1):
    """Weights [*L, *S] (``lead`` dims L; S empty, or the output's trailing spatial size, per-pixel
    weights) viewed to multiply ``out`` [*L, ..., *S]."""
    return weights.to(out.dtype).view(*weights.shape[:lead], *[1] * (out.dim() - weights.dim()), *weights.shape[lead:])


def _groupable(experts):
    if all(isinstance(e, DeepLabDecoder) for e in experts):
        return all(isinstance(stage[0], DepthwiseSeparableConv2d) for e in experts for stage in e.refine)
    if all(isinstance(e, ClassificationHead) for e in experts):
        return all(isinstance(e.conv, nn.Sequential) and isinstance(e.conv[0], DepthwiseSeparableConv2d)
                   for e in experts)
    return False


class ExpertBank(nn.Module):
    """The E experts of one task.

    ``grouped`` picks the dense form: True, the grouped computation; False, one expert after another;
    "auto" (default), grouped on CUDA and sequential elsewhere. On the CPU oneDNN's grouped kernels (the
    depthwise backward over E times the channels above all) are slower than E separate calls: a dense
    training step takes about 1.5x as long grouped (benchmarks/bench_routing.py prints both forms).
    """

    def __init__(self, experts, grouped="auto"):
        super().__init__()
        if grouped not in (True, False, "auto"):
            raise ValueError(f"grouped={grouped!r}: expected True, False or 'auto'")
        self.experts = nn.ModuleList(experts)
        self.grouped = grouped
        self.groupable = _groupable(self.experts)
        self.keep_skipped_in_graph = False

    def __len__(self):
        return len(self.experts)

    def __getitem__(self, index):
        return self.experts[index]

    def runs_grouped(self, device):
        """Whether the dense form on `device` is the grouped computation."""
        wanted = device.type == "cuda" if self.grouped == "auto" else self.grouped
        return wanted and self.groupable

    def run_all(self, inputs):
        """Every expert on every image: -> [B, E, ...]."""
        if self.runs_grouped(inputs[0].device):
            if isinstance(self.experts[0], DeepLabDecoder):
                return grouped_decoders(list(self.experts), *inputs)
            return grouped_classification_heads(list(self.experts), *inputs)
        return torch.stack([expert(*inputs) for expert in self.experts], dim=1)

    def mix(self, inputs, mixture, plan):
        """Weighted sum of expert outputs per image.

        inputs: tuple of [B, ...] tensors every expert takes; mixture [B, E], or [B, E, h, w] per-pixel
        weights of outputs [B, C, h, w] (region routing); plan: per expert the indices of the images it
        runs on, or None when it runs on none. -> [B, ...].
        """
        return self.mix_many(inputs, [mixture], plan)[0]

    def mix_many(self, inputs, mixtures, plan):
        """Several weighted sums of the same expert outputs (the tasks sharing one pool of experts):
        each expert runs once on the images of its plan, and each mixture ([B, E], or per-pixel
        [B, E, h, w] as in `mix`) adds the output with its own weights (zero for an image that mixture
        did not select). -> [[B, ...] per mixture].
        """
        batch = inputs[0].shape[0]
        if all(indices is not None and indices.numel() == batch for indices in plan):
            outputs = self.run_all(inputs)  # [B, E, ...]
            return [(outputs * _against(m, outputs, lead=2)).sum(dim=1) for m in mixtures]
        mixed, untouched = [None] * len(mixtures), []
        for expert_index, indices in enumerate(plan):
            if indices is None:
                if self.keep_skipped_in_graph and self.training:
                    untouched += [p.sum() for p in self.experts[expert_index].parameters()]
                continue
            if indices.numel() == batch:  # every image (the plan lists them in batch order): no gather, no scatter
                out = self.experts[expert_index](*inputs)
                for k, mixture in enumerate(mixtures):
                    part = out * _against(mixture[:, expert_index], out)
                    mixed[k] = part if mixed[k] is None else mixed[k] + part
                continue
            out = self.experts[expert_index](*(x.index_select(0, indices) for x in inputs))
            for k, mixture in enumerate(mixtures):
                weight = _against(mixture[indices, expert_index], out)
                if mixed[k] is None:
                    mixed[k] = out.new_zeros((batch, *out.shape[1:]))
                mixed[k] = mixed[k].index_add(0, indices, out * weight)
        if untouched:
            keep = 0 * torch.stack(untouched).sum()
            mixed = [m + keep for m in mixed]
        return mixed
