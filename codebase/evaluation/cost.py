"""What a model costs: parameters, forward FLOPs (torch.utils.flop_counter), latency, peak memory."""
import ctypes
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from codebase.networks.expert_layout import dispatch_routings


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def forward_flops(module, run):
    """FLOPs of ``run()`` (a forward through ``module``): {"total": n, "<child>": n per direct child}.

    A child's count covers work inside its own forward, or, for a container that is not called itself
    (a ModuleDict of gates or experts), inside the forwards of its outermost modules that ran; work a
    parent does with the child's weights (the grouped expert path, say) counts in the total only.
    """
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        run()
    counts = {name: sum(by_op.values()) for name, by_op in counter.get_flop_counts().items()}
    root = type(module).__name__
    result = {"total": int(counter.get_total_flops())}
    for name, _ in module.named_children():
        result[name] = int(_flops_inside(counts, f"{root}.{name}"))
    return result


def _flops_inside(counts, prefix):
    """FLOPs counted for module ``prefix``, or summed over its outermost descendants that ran."""
    if prefix in counts:
        return counts[prefix]
    inside = [name for name in counts if name.startswith(prefix + ".")]
    return sum(counts[name] for name in inside
               if not any(name.startswith(other + ".") for other in inside if other != name))


def synchronize(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_seconds(run, device="cpu", repeats=10, warmup=2):
    """Median wall time of ``run()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _resident_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _return_freed_memory():
    """Hand freed heap memory back to the OS (glibc's malloc_trim), so that the peak-RSS growth
    measured next is the run's own memory, not 0 because earlier runs left theirs resident."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the reading is what it is
        pass


def peak_memory_bytes(run, device="cpu"):
    """Peak memory ``run()`` adds: CUDA allocator peak, or on Linux CPUs the growth of peak RSS.

    Returns None where neither can be read (macOS CPU, MPS).
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu" or not Path("/proc/self/clear_refs").exists():
        return None
    _return_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak-RSS high-water mark
        before = _resident_kib("VmRSS")
        run()
        return max(0, _resident_kib("VmHWM") - before) * 1024
    except OSError:
        return None


def machine(device) -> str:
    """The device in words, for the heading of a measurement: GPU name, or CPU, cores and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def predicted_top_p_flops(model, images, side="all"):
    """FLOPs a top-p forward of the multi-task model on ``images`` should count, predicted from the
    dense forward's: each expert's dense count (every image) scaled by the share of the images that
    run it, ``Routing.image_mask`` (with region routing: the images some cell of which chose it).
    Returns (predicted, routings: each task's own). Eval-mode routing; the experts counted one after another (the
    grouped form does the same arithmetic but counts it outside the expert modules).
    """
    banks = list(model.experts.values())
    grouped = [bank.grouped for bank in banks]
    for bank in banks:
        bank.grouped = False
    try:
        with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
            model(images, side=side, dense=True)
            counts = counter.get_flop_counts()
            dense = counter.get_total_flops()
    finally:
        for bank, value in zip(banks, grouped):
            bank.grouped = value
    with torch.no_grad():
        routings = model(images, side=side)["routing"]
    root, predicted = type(model).__name__, float(dense)
    # per unit owning routed experts (a task, or a side's shared pool run on the union of its tasks' images);
    # always-on shared experts and output layers stay counted in full
    for owner, routing in dispatch_routings(routings, model.owner).items():
        share = routing.image_mask.float().mean(dim=0).tolist()  # [E]: share of the images that run expert e
        for expert, run in enumerate(share):
            predicted -= (1 - run) * sum(counts.get(f"{root}.experts.{owner}.experts.{expert}", {}).values())
    return predicted, routings
