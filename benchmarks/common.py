"""Helpers the benchmark scripts share: a plain-text table, ratios, the routing benchmarks' tasks."""
import torch

TASKS = {"classification_rg": 5, "classification_mer": 3, "segmentation_ma": 1, "segmentation_he": 1,
         "segmentation_ex": 1, "segmentation_se": 1, "segmentation_od": 1}


def one_expert_router(model):
    """Bias every gate so each image's weight on one expert (image-dependent) exceeds p."""
    for index, gate in enumerate(model.gates.values()):
        last = gate.net[-1]
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.zero_()
            last.bias[index % model.num_experts] = 8.0


def print_table(title, header, rows):
    """Print rows (lists of cells) under a header, columns padded to their widest cell."""
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else f"{c:.4g}" if isinstance(c, float) else str(c)
                                           for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def ratio(numerator, denominator):
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"
