"""The loaders of a run under torchrun (see `promptkd.distributed` for the process group).

`distribute_loaders(trainer)` replaces the loaders Dassl built, keeping their dataset wrapper
(`CheckedDatasetWrapper`) and collation (`collate_checked`):

* training: the trainer's `build_train_sampler(data_source)` (by default torch's
  DistributedSampler over (SEED, epoch)), `drop_last` so every rank runs the same number of
  steps; the batch size stays per process;
* evaluation: `ShardSampler`, each test image on exactly one rank, no padding duplicates; the
  trainer gathers the scores of all ranks before computing accuracies.

Refused with a ConfigError: Dassl's class / domain samplers (they build whole batches
themselves and are not rank-aware), and a world size that leaves a rank without a batch.
"""
from __future__ import annotations

from torch.utils.data import DataLoader

from promptkd import distributed as dist_
from promptkd.errors import ConfigError

TRAIN_SAMPLERS = ("RandomSampler", "SequentialSampler")


def check_sampler(cfg) -> None:
    """Before Dassl builds its loaders: its class / domain samplers are not rank-aware."""
    sampler = cfg.DATALOADER.TRAIN_X.SAMPLER
    if sampler not in TRAIN_SAMPLERS:
        raise ConfigError(
            f"DATALOADER.TRAIN_X.SAMPLER {sampler} cannot be split across processes (torchrun): use "
            f"{' or '.join(TRAIN_SAMPLERS)}, or train in one process (python train.py ...).")


def distribute_loaders(trainer) -> None:
    """Replace the trainer's training and evaluation loaders by their per-rank versions."""
    loader = trainer.train_loader_x
    source, batch, world = loader.dataset.data_source, loader.batch_size, dist_.world_size()
    if len(source) // world < batch:
        raise ConfigError(
            f"{len(source)} training images over {world} process(es) leave each fewer than one batch of "
            f"DATALOADER.TRAIN_X.BATCH_SIZE {batch} (the batch is per process): use at most "
            f"{max(len(source) // batch, 1)} processes or a smaller batch size.")
    trainer.train_loader_x = reload(loader, trainer.build_train_sampler(source), drop_last=True)
    shared = trainer.test_loader is trainer.eval_loader
    trainer.eval_loader = reload(trainer.eval_loader, dist_.ShardSampler(trainer.eval_loader.dataset))
    if shared:
        trainer.test_loader = trainer.eval_loader


def reload(loader: DataLoader, sampler, drop_last: bool = False) -> DataLoader:
    """`loader` with another sampler: same dataset wrapper, batch size, workers, collation,
    pinned memory; its workers persist across epochs (see `keep_workers`)."""
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=drop_last,
                      persistent_workers=loader.num_workers > 0)


def keep_workers(trainer) -> None:
    """The trainer's loaders with persistent workers (DATALOADER.NUM_WORKERS > 0): Dassl's
    loaders fork their workers again for every epoch and every evaluation (each worker imports
    torch and copies the dataset: seconds per fork on a GPU machine's 8 workers). Loaders built
    elsewhere with persistent workers already, and those without workers, are kept as they are."""
    for name in ("train_loader_x", "val_loader", "test_loader", "eval_loader"):
        loader = getattr(trainer, name, None)
        if loader is None or loader.num_workers == 0 or loader.persistent_workers or loader.batch_sampler is None \
                or type(loader.batch_sampler).__name__ != "BatchSampler":
            continue
        shared = [other for other in ("val_loader", "test_loader", "eval_loader") if getattr(trainer, other, None) is loader]
        new = reload(loader, loader.sampler, drop_last=loader.drop_last)
        for other in [name, *shared]:
            setattr(trainer, other, new)
