"""Run by torchrun (2 CPU processes) from test_base: one DDP step of a gradient weighting.

Each rank takes its half of the toy batch; the per-task gradient matrix is averaged across
ranks by ``reduce``. Rank 0 saves the shared and head gradients to argv[2] for comparison with a
single-process step on the whole batch; every rank checks that its shared gradients match rank 0's.
"""
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from codebase.runtime import distributed
from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, TwoHeads, batch


def all_reduce_mean(tensor):
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / dist.get_world_size()


def main(name, out_path):
    distributed.init(torch.device("cpu"))  # joins with gloo and sees to a clean interpreter shutdown
    rank, world = dist.get_rank(), dist.get_world_size()
    model = DistributedDataParallel(TwoHeads())
    weighting = make_weighting(name, TASKS, {})
    weighting.reduce = all_reduce_mean
    inputs, targets = batch()
    half = len(inputs) // world
    inputs, targets = inputs[rank * half:(rank + 1) * half], targets[rank * half:(rank + 1) * half]
    losses, extra = model(inputs, targets)
    weighting.backward(losses, extra, list(model.module.shared.parameters()))
    grads = {key: p.grad.clone() for key, p in model.module.named_parameters()}
    for key, grad in grads.items():
        reference = grad.clone()
        dist.broadcast(reference, 0)
        assert torch.equal(grad, reference), (rank, key)
    if rank == 0:
        torch.save({"grads": grads, "weights": weighting.task_weights()}, out_path)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
