"""Reproducible training views: every augmented view is a pure function of (seed, epoch, image).

Stage 2 feeds the teacher and the student the same augmented batch. For the teacher's output
to be stored and reused (`teacher_cache.py`), the view of image `index` in `epoch` must not
depend on the worker count, batch order, process count or the global RNG. Two pieces:

* `seeded_view(seed, epoch, index)`: a context in which the view's own generator, seeded from
  a hash of the three numbers, is what torch's CPU draws come from. The stock torchvision
  transforms that Dassl builds (`RandomResizedCrop` with INPUT.RRCROP_SCALE / interpolation,
  then `RandomHorizontalFlip`) take no generator argument, so the view's generator state is
  installed in the CPU default generator for the duration and the caller's state is put back
  afterwards; nothing is reseeded (no `torch.manual_seed`, which would reseed every CUDA
  generator too) and CUDA state is never read or written. The crop box and flip are
  torchvision's own draws, from a stream named by the view (the same values as before this
  was a generator of its own, so existing teacher caches stay valid). `check_view_transform` refuses transforms
  whose randomness would escape it (numpy / Python RNGs).
* `view_number(seed, epoch, index, k)`: the view bank (TRAINER.PROMPTKD.VIEWS_PER_IMAGE = k > 0).
  Image `index` then has k views, view v being the view `seeded_view(seed, v, index)` makes
  (the same stream as epoch v's view with k = 0), and epoch e draws one of them: epochs come in
  cycles of k, and in cycle c = e // k the image's k views are drawn in the order of a
  permutation that is a pure function of (seed, c, index). Every view is drawn exactly once per
  cycle (so after the first k epochs no view is new) and the choice is independent of batch
  order, workers and ranks. k = 0: view number = epoch (a fresh view every epoch).
* `ViewSampler`: the epoch's image order is a permutation that is a pure function of
  (seed, epoch); it yields `(epoch, index)` keys, so a dataset gets the epoch with every item
  (workers never hold a stale epoch). Under DDP each of `num_replicas` ranks takes every
  `num_replicas`-th key; with `drop_last` the tail is dropped so every rank runs the same
  number of batches.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from .errors import ConfigError

# Transforms whose randomness (if any) comes from torch's global RNG, or that have none.
_SEEDABLE = {"Compose", "Resize", "CenterCrop", "RandomResizedCrop", "RandomHorizontalFlip",
             "RandomVerticalFlip", "RandomCrop", "ToTensor", "PILToTensor", "ConvertImageDtype",
             "Normalize", "ColorJitter", "RandomGrayscale", "RandomApply", "GaussianBlur"}
_ORDER = -1  # the "image index" that names an epoch's permutation stream


def stream_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed naming one stream; a hash, so neighbouring views are unrelated."""
    digest = hashlib.blake2b(f"promptkd-view:{int(seed)}:{int(epoch)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def view_number(seed: int, epoch: int, index: int, k: int) -> int:
    """The view of image `index` drawn in `epoch`: `epoch` itself when k = 0 (a fresh view per
    epoch), else a number in [0, k), each drawn once per cycle of k epochs (module docstring)."""
    if k <= 0:
        return int(epoch)
    if k == 1:
        return 0
    cycle, slot = divmod(int(epoch), int(k))
    digest = hashlib.blake2b(f"promptkd-pick:{int(seed)}:{cycle}:{int(index)}".encode(), digest_size=8).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return int(torch.randperm(int(k), generator=gen)[slot])


def view_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, epoch, index))


@contextlib.contextmanager
def seeded_view(seed: int, epoch: int, index: int):
    """Run the transforms of one view drawing from its own generator (`view_generator`).

    The CPU default generator holds the view's state inside the block (the transforms read
    it) and the caller's exact state again afterwards, even if the block raises; no CUDA
    generator is touched."""
    default = torch.default_generator
    saved = default.get_state()
    default.set_state(view_generator(seed, epoch, index).get_state())
    try:
        yield
    finally:
        default.set_state(saved)


def check_view_transform(transform, where: str = "INPUT.TRANSFORMS") -> list[str]:
    """Refuse a transform whose randomness seeded_view cannot name; returns its description
    (one repr per step: sizes, scale, ratio, interpolation, mean / std)."""
    steps = list(getattr(transform, "transforms", [transform])) if transform is not None else []
    for t in steps:
        name = type(t).__name__
        if name not in _SEEDABLE:
            raise ConfigError(
                f"The train transform {name} (from {where}) draws its randomness outside torch's RNG, "
                "so its views could not be reproduced per (seed, epoch, image) for the teacher cache. "
                "Use random_resized_crop, random_flip, random_crop, colorjitter, randomgrayscale, "
                "gaussian_blur, normalize.")
    return [repr(t) for t in steps]


class ViewSampler(Sampler):
    """Epoch order = a permutation that is a pure function of (seed, epoch); yields
    `(epoch, index)` keys for this rank. Call `set_epoch` before each epoch.

    `num_replicas` / `rank` default to torch.distributed's when it is initialised (else 1 / 0).
    drop_last: drop the tail so the key count divides by num_replicas (every rank the same
    number of keys); otherwise pad by repeating the first keys (as DistributedSampler does).
    """

    def __init__(self, n_images: int, seed: int, shuffle: bool = True, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = True):
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas}).")
        self.n_images, self.seed, self.shuffle, self.drop_last = int(n_images), int(seed), shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> list[int]:
        """All ranks' image order in `epoch` (before splitting among ranks)."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            return torch.randperm(self.n_images, generator=view_generator(self.seed, epoch, _ORDER)).tolist()
        return list(range(self.n_images))

    def __len__(self) -> int:
        if self.drop_last:
            return self.n_images // self.num_replicas
        return math.ceil(self.n_images / self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        total = len(self) * self.num_replicas
        if total <= len(order):
            order = order[:total]
        else:
            order = (order * math.ceil(total / max(len(order), 1)))[:total]
        for index in order[self.rank::self.num_replicas]:
            yield self.epoch, index
