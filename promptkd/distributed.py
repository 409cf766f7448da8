"""Multi-process training (torchrun + DistributedDataParallel): the one place that knows about
process groups. Plain PyTorch, no Dassl.

    torchrun --nproc_per_node 4 train.py ...            # one node, 4 GPUs
    torchrun --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT \
             --nproc_per_node 8 train.py ...            # several nodes

`init(use_cuda)` reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK,
LOCAL_WORLD_SIZE): without it (plain `python train.py`) it does nothing and every helper
below answers as a single process would (rank 0 of 1, barriers are no-ops). With it, it
starts the process group ("nccl" on GPUs, "gloo" on CPU) and makes the process's LOCAL_RANK
GPU the current device, so `torch.device("cuda")` means that GPU.

Helpers: `rank()`, `world_size()`, `is_main()`, `barrier()`, `main_first()` (rank 0 runs a
block, e.g. writing dataset caches, before the others), `all_gather_objects()` (small metadata
only), `gather_rows()` (tensors: evaluation's predictions, the teacher cache's embeddings),
`sum_over_ranks()` (counts, e.g. of skipped unreadable images),
`shard_indices()` / `ShardSampler` (each example on exactly one rank, no padding),
`wrap(model)` (DistributedDataParallel; optional SyncBatchNorm), `sync_buffers()`, `shared_seed()` and
`teardown()`.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import random

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from .errors import ConfigError

logger = logging.getLogger("promptkd")

ENV_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True when this process was started by torchrun (or another launcher setting its env)."""
    return all(k in os.environ for k in ENV_KEYS)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def init(use_cuda: bool = True, timeout_minutes: float = 30.0) -> bool:
    """Start the process group if launched by torchrun; returns whether it did.

    Refuses (ConfigError) more processes per node than visible GPUs, and a multi-process run
    on a machine without a GPU unless the config says CPU (USE_CUDA False)."""
    if not launched_by_torchrun() or is_distributed():
        return is_distributed()
    local, per_node = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cuda = use_cuda and torch.cuda.is_available()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    if cuda and per_node > torch.cuda.device_count():
        raise ConfigError(
            f"{per_node} processes per node (torchrun --nproc_per_node / GPUS={per_node}) but only "
            f"{torch.cuda.device_count()} GPU(s) are visible{where}: use at most "
            f"{torch.cuda.device_count()} (one process per GPU).")
    if use_cuda and not cuda:
        raise ConfigError(
            f"{per_node} processes per node were launched but no GPU is visible{where}. To train "
            "with several CPU processes (gloo) on purpose, add USE_CUDA False to the command.")
    if cuda:
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    atexit.register(teardown)
    logger.debug("process group: %s, rank %d of %d", backend, rank(), world_size())
    return True


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def finish() -> None:
    """End a run that succeeded on every rank: wait for all ranks, then destroy the group.

    Without the barrier, a rank that finishes first tears its side of the group down while a
    peer is still inside gloo, and the peer can abort at exit ("terminate called without an
    active exception", SIGABRT; seen on a loaded 2-core machine). The atexit teardown stays
    for runs that end with an error, where a barrier could wait forever."""
    if is_distributed():
        dist.barrier()
        # A second barrier: gloo's worker thread destroys the first barrier's work, which holds the
        # last collective's tensors (Python objects: freeing them takes the GIL), before it takes
        # this one. Without it, the group's destructor (run when the DDP model is freed, holding
        # the GIL) can join that thread while it waits for the GIL: a hang at exit, seen once with
        # torch 2.4 on a loaded 2-core machine (the run had finished and written its results).
        dist.barrier()
        dist.destroy_process_group()


def device(use_cuda: bool = True) -> torch.device:
    """This process's device: its LOCAL_RANK GPU under torchrun, else cuda / cpu."""
    if use_cuda and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. builds split JSON / few-shot caches), then the rest.

    Global rank 0, not each node's local rank 0: the other ranks read what it wrote, so a run
    over several nodes needs DATASET.ROOT (and the output folder, where rank 0 alone writes the
    checkpoints every rank resumes from) on a filesystem all nodes share (docs/gpu.md)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any rank."""
    if not is_distributed():
        return flag
    return any(all_gather_objects(bool(flag)))


def sum_over_ranks(*counts: int) -> tuple:
    """Each count summed over every rank, on every rank (a tensor all_reduce: NCCL on GPUs,
    gloo on CPU); one process: returned as given. Every rank must call it at the same point."""
    if not is_distributed():
        return tuple(int(c) for c in counts)
    total = torch.tensor([int(c) for c in counts], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return tuple(int(c) for c in total.tolist())


def shared_seed(seed: int) -> int:
    """`seed` if >= 0, else one random seed drawn on rank 0 and used by every rank."""
    if seed >= 0:
        return seed
    return all_gather_objects(random.randrange(2 ** 31))[0]


def shard_indices(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """The indices of `n` examples rank `rank_` takes: every example on exactly one rank, in
    order, without the padding DistributedSampler adds."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return range(rank_, n, world)


class ShardSampler(Sampler):
    """Sequential sampler over this rank's shard (`shard_indices`), for evaluation."""

    def __init__(self, data_source, rank_: int | None = None, world: int | None = None):
        self.indices = shard_indices(len(data_source), rank_, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them
    before each forward, so after the last step each rank still holds its own update: call
    this before checkpointing or evaluating."""
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def wrap(model: nn.Module, sync_bn: bool = False) -> nn.Module:
    """`model` for the training forward: DistributedDataParallel under torchrun, else itself.

    The caller keeps (and checkpoints) the unwrapped `model`; the wrapper shares its
    parameters. Every trainable parameter must reach the loss (no find_unused_parameters).
    `sync_bn`: BatchNorm layers become SyncBatchNorm (batch statistics over all ranks); GPU
    only, since DDP cannot run SyncBatchNorm on CPU modules."""
    if not is_distributed():
        return model
    on_gpu = next(model.parameters()).is_cuda
    if sync_bn:
        if not on_gpu:
            raise ConfigError("DISTRIBUTED.SYNC_BN True needs GPUs: SyncBatchNorm only works on GPU "
                              "modules. Set DISTRIBUTED.SYNC_BN False on CPU (each process then "
                              "normalises over its own batch).")
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the top
        assert converted is model, "wrap() expects a model that holds its BatchNorm layers"
    ids = [torch.cuda.current_device()] if on_gpu else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _collective_device() -> torch.device:
    """Where the default group's tensors must live: this process's GPU for NCCL, else the CPU."""
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_single():
    # torch >= 2.10 names it all_gather_single (all_gather_into_tensor is its deprecated alias).
    return getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def gather_rows(*tensors: torch.Tensor | None) -> tuple:
    """Every rank's rows of each tensor, concatenated in rank order, on every rank.

    Tensor collectives: each tensor is padded to the longest rank's row count and gathered with
    one all-gather into a single tensor (NCCL on GPUs, gloo on CPU), then the padding is cut.
    Only the row counts, trailing shapes and dtypes (a few numbers per tensor) travel as
    objects. A rank with no rows passes None (it learns the shape from the others). Results
    are on the device of this rank's input (the CPU for None). One process: returned as given."""
    if not is_distributed():
        return tensors
    meta = all_gather_objects([None if t is None else (len(t), tuple(t.shape[1:]), t.dtype) for t in tensors])
    device, gather, world = _collective_device(), _all_gather_single(), world_size()
    out = []
    for j, t in enumerate(tensors):
        known = [m[j] for m in meta if m[j] is not None]
        if not known:  # no rank has rows: an empty result
            out.append(torch.empty(0))
            continue
        _, shape, dtype = known[0]
        if any(k[1:] != (shape, dtype) for k in known):
            raise RuntimeError(f"gather_rows: ranks disagree on the shape / dtype of tensor {j}: {known}")
        lengths = [0 if m[j] is None else m[j][0] for m in meta]
        rows = max(lengths)
        padded = torch.zeros((rows, *shape), dtype=dtype, device=device)
        if t is not None and len(t):
            padded[:len(t)] = t.to(device)
        full = torch.empty((world * rows, *shape), dtype=dtype, device=device)
        gather(full, padded)
        joined = torch.cat([full[r * rows:r * rows + n] for r, n in enumerate(lengths)])
        out.append(joined.to(t.device if t is not None else "cpu"))
    return tuple(out)


def gather_in_order(indices: list, *columns: list) -> tuple:
    """Evaluation results of every rank, in dataset order, on every rank.

    `indices`: this rank's batches of dataset indices; each of `columns`: this rank's batches
    of per-example tensors (predictions, labels, ...). Returns one tensor per column holding the
    examples of all ranks sorted by index, so the result equals a single-process pass. The
    batches travel as tensors (`gather_rows`)."""
    local = [torch.cat(batches) if batches else None for batches in (indices, *columns)]
    if not is_distributed() and local[0] is None:
        return tuple(torch.empty(0) for _ in columns)
    index, *gathered = gather_rows(*local)
    order = index.argsort()
    if len(index.unique()) != len(index):
        raise RuntimeError("evaluation saw an example on two ranks: the test loader must use ShardSampler")
    return tuple(column[order] for column in gathered)
