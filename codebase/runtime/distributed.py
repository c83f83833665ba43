"""Data-parallel training with torchrun: process group, DDP wrapping, samplers, collectives.

Launch any train script with `torchrun --nproc_per_node=N script.py ...` (several machines: add
torchrun's `--nnodes` and `--rdzv_*` options). torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `init` joins the group with nccl on CUDA and gloo on CPU. Without
torchrun (or with one process) every function here is a cheap no-op, so the same code runs in
a single process.

Rules the rest of the code follows:
- only rank 0 writes files and shows progress bars (`is_main_process`);
- training uses `train_sampler` (every rank gets the same number of batches, which DDP needs);
  evaluation uses `eval_sampler` (each sample exactly once, no padding) on the *unwrapped*
  model (`unwrap`), then sums metric state tensors with `all_reduce_sum`, so metrics equal a
  single-process evaluation;
- checkpoints hold `unwrap(model).state_dict()`, which loads at any world size.
"""

import atexit
import gc
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Sampler

_collective_device = torch.device("cpu")


def init(device: torch.device) -> bool:
    """Join the process group that torchrun describes; return whether training is distributed."""
    global _collective_device
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    # The process group must be gone before the interpreter shuts down: a gloo worker thread
    # that releases a finished collective's tensors during shutdown aborts the process. Two
    # things kept it alive past destroy_process_group (torch 2.14): importing torch._dynamo
    # after the group exists (DDP does) stores references to it for good, so import it first;
    # and a DDP model caught in a reference cycle, so collect garbage at exit.
    import torch._dynamo  # noqa: F401

    atexit.register(gc.collect)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        _collective_device = device
    backend = "nccl" if device.type == "cuda" else "gloo"
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart:
        # After torchrun restarted the workers (--max-restarts), the rendezvous store still holds
        # the dead group's addresses under the same keys; a prefix per restart keeps them apart.
        from torch.distributed.rendezvous import rendezvous

        store, group_rank, size = next(rendezvous("env://"))
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"restart_{restart}", store),
                                rank=group_rank, world_size=size)
    else:
        dist.init_process_group(backend=backend)
    return True


def shutdown(wait: bool = True) -> None:
    """Leave the process group, after a barrier unless `wait` is False (e.g. on an error)."""
    if is_distributed():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Index of this process on its machine (torchrun's LOCAL_RANK), 0 without torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over all ranks, in place (metric state: counts, histograms, confusions)."""
    if not is_distributed():
        return
    for tensor in tensors:
        if tensor.device == _collective_device:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        else:
            staged = tensor.to(_collective_device)
            dist.all_reduce(staged, op=dist.ReduceOp.SUM)
            tensor.copy_(staged)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all ranks, as a new tensor (the tensor itself with one process).

    Gradient weightings reduce their per-task gradient matrix with it, so every rank combines the
    same gradients.
    """
    if not is_distributed():
        return tensor
    summed = tensor.detach().clone()
    all_reduce_sum([summed])
    return summed / world_size()


def any_rank(flag: bool) -> bool:
    """True if `flag` is true on at least one rank (every rank must call this together)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=_collective_device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_gather_object(obj) -> list:
    """One picklable object from every rank, in rank order."""
    if not is_distributed():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, source: int = 0):
    """Rank `source`'s `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, source: int = 0) -> None:
    """Copy rank `source`'s buffers (BatchNorm running statistics) to every rank.

    Each rank's last training forward updates its own running statistics, so before evaluating
    the unwrapped model every rank takes rank 0's, the ones its checkpoint holds.
    """
    if not is_distributed():
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, source)


def wrap_model(model: torch.nn.Module, device: torch.device,
               find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `model` when distributed, else `model` itself.

    `find_unused_parameters=True` is needed when some parameters may get no gradient in a step
    (e.g. experts that no image on this rank selected). It costs a traversal of the autograd
    graph after every forward pass and rules out some bucketing optimisations, so leave it off
    for models that use every parameter on every step.
    """
    if not is_distributed():
        return model
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (what checkpoints hold and evaluation runs)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def train_sampler(dataset: Dataset, seed: int, shuffle: bool = True) -> DistributedSampler:
    """This rank's share of `dataset`, reshuffled from (seed, epoch) by `set_epoch(epoch)`.

    All ranks get the same number of samples (a few are repeated to pad), so DDP's gradient
    synchronisation never waits for a rank that has run out of batches.
    """
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(),
                              shuffle=shuffle, seed=seed)


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world_size, ... in order, unpadded: each sample is seen once overall."""

    def __init__(self, dataset_size: int):
        self.indices = range(rank(), dataset_size, world_size())

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_sampler(dataset: Dataset) -> ShardSampler:
    """This rank's unpadded share of `dataset` for evaluation (ranks may differ by one sample)."""
    return ShardSampler(len(dataset))
