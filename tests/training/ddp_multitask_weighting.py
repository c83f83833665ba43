"""Run by torchrun (2 gloo processes) from test_weighting_multitask: a few steps of the tiny
multi-task model with a gradient weighting under DDP, each rank on its own half of the fixed batch.

Every rank checks that its parameters equal rank 0's after training; rank 0 saves the largest
difference between ranks, how far the weights moved and the last task weights to argv[3].
"""
import sys

import torch
import torch.distributed as dist

from codebase.training import distributed
from tests.training.test_weighting_multitask import fixed_batches, tiny_training, train


def flat_parameters(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def main(method, root, out_path):
    device = torch.device("cpu")
    assert distributed.init(device) and distributed.world_size() == 2
    rank = distributed.rank()
    batches = fixed_batches(root)
    halves = {"grading": 5, "segmentation": 2}  # 10 grading, 4 segmentation images: one half each
    batches = {side: {key: value[rank * halves[side]:(rank + 1) * halves[side]] for key, value in batch.items()}
               for side, batch in batches.items()}
    step, weighting, optimizer = tiny_training(method)
    step.model.keep_skipped_experts_in_graph()
    start = flat_parameters(step)
    step = distributed.wrap_model(step, device)
    logged = train(step, weighting, optimizer, batches, 4)
    trained = flat_parameters(distributed.unwrap(step))
    reference = trained.clone()
    dist.broadcast(reference, 0)
    difference = float((trained - reference).abs().max())
    assert difference == 0.0, (rank, difference)
    if rank == 0:
        torch.save({"max_difference_between_ranks": difference, "moved": float((trained - start).abs().max()),
                    "task_weights": logged[-1]}, out_path)
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
