"""What the gates read, and region routing: experts chosen per cell of a coarse grid.

Gate input (``routing.gate_input``): "high", the high-level (stride-16) features averaged over the
image (the default); "low", the low-level (stride-4) features averaged, where colour, illumination
and blur live; "both", the two concatenated (high first). The gate's input width follows
(`gate_input_channels`).

Region routing (``routing.granularity = "region"``, segmentation tasks only; grading tasks keep
one decision per image): the gate input is averaged over each cell of a ``grid`` = (rows, columns)
grid instead of the whole image (adaptive average pooling), and the task's gate scores every cell:
N = B x cells routed items, cells of an image consecutive, row-major. Top-p, the selection bias,
the gate regularisers and the router usage records all see the cells as the routed items.

How compute is saved, exactly: an expert runs on the images of which at least one cell selected
it, on the whole image (no crops), and on none otherwise (it is not called). Its stride-4 output
is weighted per pixel by its cell's mixture weight, the [B, E, rows, columns] map upsampled
*nearest* to the stride-4 size (`pixel_weights`), so the weights are piecewise constant over the
cells and an expert contributes nothing where its cell did not select it. FLOPs are therefore
those of image routing with the per-image dispatch ``Routing.image_mask`` (an expert x image pair
runs when any cell of the image chose the expert): shared part + sum over tasks and experts of the
images that run it x one expert's cost per image (`codebase/evaluation/cost.py`
`predicted_top_p_flops`). The pooling, the weight maps and the products are element-wise work that
FLOP counters (torch.utils.flop_counter) do not count.
"""
import torch
import torch.nn.functional as F

GATE_INPUTS = ("high", "low", "both")
GRANULARITIES = ("image", "region")


def gate_input_channels(low_channels, high_channels, gate_input):
    """The gate's input width for ``gate_input``."""
    if gate_input not in GATE_INPUTS:
        raise ValueError(f"gate_input must be one of {GATE_INPUTS}, got {gate_input!r}")
    return {"high": high_channels, "low": low_channels, "both": high_channels + low_channels}[gate_input]


def _pool(features, grid):
    if grid is None:
        return features.mean(dim=(2, 3))  # [B, C]
    cells = F.adaptive_avg_pool2d(features, grid)  # [B, C, rows, columns]
    return cells.flatten(2).transpose(1, 2).flatten(0, 1)  # [B * cells, C], cells row-major per image


def gate_features(low_level, high_level, gate_input, grid=None):
    """The gates' input: per image [B, C] (grid None), or per cell [B * rows * columns, C]."""
    if gate_input == "high":
        return _pool(high_level, grid)
    if gate_input == "low":
        return _pool(low_level, grid)
    return torch.cat([_pool(high_level, grid), _pool(low_level, grid)], dim=-1)


def pixel_weights(mixture, grid, size):
    """Per-cell mixture [B * cells, E] -> per-pixel weights [B, E, *size], nearest upsampling of the grid."""
    rows, columns = grid
    maps = mixture.view(-1, rows, columns, mixture.shape[-1]).permute(0, 3, 1, 2)  # [B, E, rows, columns]
    return F.interpolate(maps, size=tuple(size), mode="nearest")
