"""Helpers the benchmark scripts share: a plain-text table and the machine's description."""
import os
import platform

import torch


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


def machine(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def ratio(numerator, denominator):
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"
