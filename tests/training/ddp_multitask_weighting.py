"""Run by torchrun (2 gloo processes) from test_weighting_ddp: for each weighting named in
argv[1] (comma-separated), two steps of the tiny multi-task model under DDP, each rank on its own
half of the fixed batch.

For every method each rank checks that its model parameters and the task weights it logged equal
rank 0's; rank 0 saves per method the largest parameter difference between ranks, how far the
weights moved and the last task weights to argv[3].
"""
import sys

import torch
import torch.distributed as dist

from codebase.runtime import distributed
from tests.training.test_weighting_multitask import fixed_batches, tiny_training, train


def flat_parameters(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def identical_on_every_rank(values):
    """Largest absolute difference between this rank's tensor and rank 0's."""
    reference = values.clone()
    dist.broadcast(reference, 0)
    return float((values - reference).abs().max())


def train_one_method(method, batches, device):
    step, weighting, optimizer = tiny_training(method)
    step.model.keep_skipped_experts_in_graph()
    start = flat_parameters(step)
    step = distributed.wrap_model(step, device)
    # two steps (one epoch): the second already uses what the first left (GradVac's targets, FAMO's logits,
    # the uncertainty weights), and every step all-reduces
    logged = train(step, weighting, optimizer, batches, 2)
    trained = flat_parameters(distributed.unwrap(step))
    difference = identical_on_every_rank(trained)
    weights = torch.tensor([[epoch[task] for task in sorted(epoch)] for epoch in logged])
    weight_difference = identical_on_every_rank(weights)
    assert difference == 0.0 and weight_difference == 0.0, (method, distributed.rank(), difference, weight_difference)
    return {"max_difference_between_ranks": difference, "task_weight_difference": weight_difference,
            "moved": float((trained - start).abs().max()), "task_weights": logged[-1]}


def main(methods, root, out_path):
    device = torch.device("cpu")
    assert distributed.init(device) and distributed.world_size() == 2
    rank = distributed.rank()
    batches = fixed_batches(root)
    halves = {"grading": 5, "segmentation": 2}  # 10 grading, 4 segmentation images: one half each
    batches = {side: {key: value[rank * halves[side]:(rank + 1) * halves[side]] for key, value in batch.items()}
               for side, batch in batches.items()}
    results = {method: train_one_method(method, batches, device) for method in methods.split(",")}
    if rank == 0:
        torch.save(results, out_path)
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
