"""PromptKD's train loader: Dassl's data and transforms, with reproducible views.

`build_view_loader` keeps everything Dassl builds for the train split (dataset, the train
transform from INPUT.*, unreadable-image screening of `CheckedDatasetWrapper`) and changes
two things (see `promptkd/views.py`): the order of each epoch comes from a `ViewSampler`
(a pure function of the view seed and the epoch), and `ViewDatasetWrapper` runs the stock
transform of image `index` in `epoch` with torch's RNG seeded from (view seed, epoch, index).
Batches carry `index` (Dassl's) and `epoch`, which name the view (the teacher cache's key).
The result does not depend on DATALOADER.NUM_WORKERS.
"""
from __future__ import annotations

import logging
import random

import torch
from torch.utils.data import DataLoader

from promptkd.errors import ConfigError
from promptkd.views import ViewSampler, check_view_transform, seeded_view, view_number
from promptkd.trainers.data import CheckedDatasetWrapper, check_loader, collate_checked

logger = logging.getLogger("promptkd")


class ViewDatasetWrapper(CheckedDatasetWrapper):
    """Items are keyed by (epoch, index); the view is a pure function of the key.

    views_per_image = k > 0: epoch e shows view `view_number(seed, e, index, k)` of the image's
    bank of k views (`promptkd/views.py`); a key (epoch, index, view) names the view itself (the
    cache writer's keys). Items carry `epoch`, `index` and `view` (the teacher cache's key)."""

    def __init__(self, cfg, data_source, transform=None, is_train=True, view_seed: int = 0,
                 views_per_image: int = 0):
        super().__init__(cfg, data_source, transform=transform, is_train=is_train)
        self.view_seed = int(view_seed)
        self.views_per_image = int(views_per_image)
        self.description = check_view_transform(transform)
        if self.tensor_transform is not None:  # other pixels: a cache of PIL views is not this run's
            self.description.append("decoder torchvision (decode_jpeg, transforms v2)")

    def view_of(self, epoch: int, index: int) -> int:
        return view_number(self.view_seed, epoch, index, self.views_per_image)

    def __getitem__(self, key):
        if len(key) == 3:
            epoch, index, view = key
        else:
            epoch, index = key
            view = self.view_of(epoch, index)
        with seeded_view(self.view_seed, view, index):
            item = super().__getitem__(index)
        item["epoch"] = epoch
        item["view"] = view
        item.setdefault("index", index)
        return item


def resolve_view_seed(cfg, required: bool = False) -> int:
    """TRAINER.PROMPTKD.VIEW_SEED, else the run's seed; with neither, a random one (logged),
    or an error when views must be reproducible (`required`, e.g. for the teacher cache)."""
    seed = cfg.TRAINER.PROMPTKD.VIEW_SEED
    if seed < 0:
        seed = cfg.SEED
    if seed < 0:
        if required:
            raise ConfigError("The teacher cache needs reproducible views: give --seed N (>= 0) or set "
                              "TRAINER.PROMPTKD.VIEW_SEED.")
        seed = random.SystemRandom().randrange(2**31)
        logger.info("No --seed and no TRAINER.PROMPTKD.VIEW_SEED: views drawn with view seed %d.", seed)
    return int(seed)


def build_view_loader(cfg, data_source, transform, view_seed: int):
    """(dataset, sampler, loader) for the train split; call `sampler.set_epoch` every epoch."""
    if cfg.DATALOADER.K_TRANSFORMS != 1:
        raise ConfigError(f"DATALOADER.K_TRANSFORMS is {cfg.DATALOADER.K_TRANSFORMS}; PromptKD distils one view "
                          "per image and step: set it to 1.")
    k = cfg.TRAINER.PROMPTKD.VIEWS_PER_IMAGE if "PROMPTKD" in cfg.TRAINER else 0
    if k < 0:
        raise ConfigError(f"TRAINER.PROMPTKD.VIEWS_PER_IMAGE must be >= 0 (0 = a fresh view every epoch), got {k}.")
    dataset = ViewDatasetWrapper(cfg, data_source, transform=transform, is_train=True, view_seed=view_seed,
                                 views_per_image=k)
    sampler = ViewSampler(len(data_source), view_seed, shuffle=True, drop_last=True)
    batch_size = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                        drop_last=len(sampler) >= batch_size, collate_fn=collate_checked,
                        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
                        persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0)  # no re-fork every epoch
    return dataset, sampler, check_loader(loader, "train")
