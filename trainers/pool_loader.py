"""PromptKD's unlabelled pool (TRAINER.PROMPTKD.POOL): which images stage 2 distils on.

`build_pool(trainer)` turns the pool sources (`promptkd.pools`) into the images of the run:

* map-style sources (train, train_base, folder:PATH) become one list of Dassl `Datum`
  (folder images carry label -1: nothing reads it) that `build_view_loader` serves exactly
  as it serves the train split (reproducible views, ViewSampler's share per rank, the
  teacher cache). The default POOL ['train'] is the train split object itself: bit-identical
  to the run without this setting;
* wds:PATTERN sources (WebDataset shards) are streamed (`ShardViewDataset`): each epoch the
  shard order is a permutation of (view seed, epoch); rank r takes every world-th shard of
  it, DataLoader worker w every num_workers-th shard of those (`webdataset.split_by_worker`),
  so no sample is read twice in an epoch. The epoch's step count is computed once from the
  shards' sample counts (counted once, with the content hashes, and cached) as the smallest
  count any rank reaches in any epoch, so all ranks step in lockstep and every epoch has the
  same length (TRAINER.PROMPTKD.POOL_EPOCH_IMAGES caps it). Resume re-enters at the saved
  epoch: the order is a function of the epoch number. Shards mixed with listed sources
  (train, train_base, folder:PATH) stream too: the listed images are cut into units of about a
  shard's size (`listed:NNNNN`, read from disk) that are ordered and split with the shards, so
  one epoch shows each image of both kinds at most once. Streamed pools are not used with the
  teacher cache (refused, see docs/protocols.md).

Budgets (POOL_BUDGET, POOL_BUDGET_PER_CLASS) and the leakage check (LEAKAGE_CHECK,
ALLOW_TEST_OVERLAP) are applied here too; `Pool.record()` is what run.json carries.
"""
from __future__ import annotations

import io
import itertools
import logging
import os
import random

import torch
from dassl.data.datasets import Datum
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from promptkd import distributed as dist_
from promptkd.errors import ConfigError, DataError
from promptkd.extras import require
from promptkd.pools import (WDS_IMAGE_EXTENSIONS, HashCache, budget_keep, expand_shards, find_overlap,
                            list_folder_images, parse_pool, per_class_keep)
from promptkd.views import check_view_transform, seeded_view, view_generator
from promptkd.trainers.data import UNREADABLE, collate_checked

logger = logging.getLogger("promptkd")

LEAKAGE_CHECKS = ("auto", "on", "off")
SHARD_CACHE_REFUSED = (
    "TRAINER.PROMPTKD.TEACHER_CACHE with a WebDataset pool: the teacher cache keys views by (epoch, image index) "
    "of a listed pool, and shards are streamed, so it is not supported. Run the teacher online (drop "
    "TRAINER.PROMPTKD.TEACHER_CACHE), or unpack the shards into a folder and use POOL folder:PATH.")
SHOWN = 10  # overlapping files named in the error
#: a streamed shard that yields fewer image samples than it was counted with: the marker item's key
SHARD_PROBLEM = "shard_problem"
SHARD_FIX = ("Replace the shard (copy or download it again), or drop it from TRAINER.PROMPTKD.POOL; the pool counts "
             "each shard in full when it first reads it (and checks it against sizes.json where the shards' folder "
             "has one).")


def default_hash_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "promptkd", "content_hashes.json")


LISTED_UNIT = "listed:"  # the name prefix of a unit of listed images in a streamed pool


class Pool:
    """The images of the pool: `items` (listed Datum) and/or `shards` (+ their listing).

    A pool with shards is streamed; its listed items, if any, are streamed with them."""

    def __init__(self, sources):
        self.sources = sources
        self.items: list = []
        self.shards: list[str] = []
        self.listing: dict[str, list[str]] = {}  # shard -> its image sample keys (kept ones after a budget)
        self.by_source: dict[str, int] = {}
        self.budget = None
        self.labels_used = None  # how labels were used for selection (None: never)
        self.leakage: dict = {"checked": False}

    @property
    def streamed(self) -> bool:
        return bool(self.shards)

    def __len__(self) -> int:
        return sum(len(k) for k in self.listing.values()) + len(self.items)

    def shard_names(self) -> list[str]:
        return [f"{s}::{k}" for s in self.shards for k in self.listing[s]]

    def names(self) -> list[str]:
        """Every image's name: the listed items' paths, then the shards' `shard::key`s."""
        return [it.impath for it in self.items] + self.shard_names()

    def units(self) -> dict[str, list[str]]:
        """A streamed pool's units, name -> sample keys: each shard, and the listed items cut into
        chunks of the shards' mean size (`listed:NNNNN`, keys: the image paths)."""
        units = {s: self.listing[s] for s in self.shards}
        if self.items:
            size = max(1, round(sum(map(len, units.values())) / max(len(units), 1)))
            paths = [it.impath for it in self.items]
            for n, start in enumerate(range(0, len(paths), size)):
                units[f"{LISTED_UNIT}{n:05d}"] = paths[start:start + size]
        return units

    def record(self) -> dict:
        return {"sources": [s.name for s in self.sources], "images": len(self), "images_by_source": self.by_source,
                "budget": self.budget, "labels_used_for_selection": self.labels_used,
                "streamed_shards": len(self.shards) if self.streamed else None,
                "streamed_listed_images": len(self.items) if self.streamed else None, "leakage_check": self.leakage}


def teacher_data(teacher_dir: str) -> dict | None:
    """What the teacher trained on, from its run.json (the export folder's parent), if there."""
    from promptkd import records

    if not teacher_dir:
        return None
    run = records.read_json(os.path.join(os.path.dirname(os.path.abspath(teacher_dir)), records.RUN_FILE))
    if not run:
        return None
    return {k: run.get(k) for k in ("protocol", "dataset", "train_classes", "num_shots", "seed", "trainer")}


def is_default(cfg) -> bool:
    kd = cfg.TRAINER.PROMPTKD
    return (list(kd.POOL) == ["train"] and kd.POOL_BUDGET == 0 and kd.POOL_BUDGET_PER_CLASS == 0
            and kd.LEAKAGE_CHECK == "auto")


def build_pool(trainer) -> Pool:
    """The run's pool, budgets applied and leakage checked (see the module docstring)."""
    cfg, kd = trainer.cfg, trainer.cfg.TRAINER.PROMPTKD
    if kd.LEAKAGE_CHECK not in LEAKAGE_CHECKS:
        raise ConfigError(f"TRAINER.PROMPTKD.LEAKAGE_CHECK is '{kd.LEAKAGE_CHECK}'; use one of "
                          f"{', '.join(LEAKAGE_CHECKS)}.")
    if kd.POOL_BUDGET < 0 or kd.POOL_BUDGET_PER_CLASS < 0 or kd.POOL_EPOCH_IMAGES < 0:
        raise ConfigError("TRAINER.PROMPTKD.POOL_BUDGET, POOL_BUDGET_PER_CLASS and POOL_EPOCH_IMAGES must be >= 0 "
                          "(0: no budget / the whole pool).")
    sources = parse_pool(kd.POOL)
    pool = Pool(sources)
    if list(kd.POOL) == ["train"]:  # the published protocol: the split object itself
        pool.items = trainer.dm.dataset.train_x
        pool.by_source = {"train": len(pool.items)}
    else:
        _collect(trainer, pool)
    _apply_budget(cfg, pool)
    _check_leakage(trainer, pool)
    if len(pool) == 0:
        raise DataError(f"TRAINER.PROMPTKD.POOL {list(kd.POOL)} holds no images after the budget.")
    logger.info("Unlabelled pool: %s, %d images (%s)%s", [s.name for s in sources], len(pool),
                ", ".join(f"{k} {v}" for k, v in pool.by_source.items()),
                f", budget {pool.budget}" if pool.budget else "")
    return pool


def _collect(trainer, pool: Pool) -> None:
    train = trainer.dm.dataset.train_x
    for source in pool.sources:
        if source.kind == "train":
            added = list(train)
        elif source.kind == "train_base":
            subsample = trainer.cfg.DATASET.SUBSAMPLE_CLASSES
            if subsample == "new":
                raise ConfigError("TRAINER.PROMPTKD.POOL train_base with DATASET.SUBSAMPLE_CLASSES new: the train "
                                  "split holds no base class. Use SUBSAMPLE_CLASSES all (or base).")
            # labels of the split decide membership (only the class subset; the label never reaches the loss)
            added = list(train) if subsample == "base" else [d for d in train if d.label < trainer.num_base]
            pool.labels_used = "class subset: base classes only (train_base)"
        elif source.kind == "folder":
            added = [Datum(impath=p, label=-1, classname="") for p in list_folder_images(source.arg)]
        else:
            shards = expand_shards(source.arg)
            pool.shards += shards
            added = shards
        pool.by_source[source.name] = len(added)
        if source.kind != "wds":
            pool.items += added
    if pool.streamed:
        with dist_.main_first():  # rank 0 reads the shards once; the others then hit the cache
            cache = HashCache(_hash_cache_path(trainer.cfg))
            members = {s: cache.shard(s) for s in pool.shards}
            if dist_.is_main():
                cache.save()
        pool.member_hashes = members
        pool.listing = {s: [k for k, _ in m] for s, m in members.items()}
        for source in pool.sources:
            if source.kind == "wds":
                pool.by_source[source.name] = sum(len(pool.listing[s]) for s in expand_shards(source.arg))
        empty = [s for s, keys in pool.listing.items() if not keys]
        if empty:
            logger.warning("WebDataset shards without image samples (%s): %s", "/".join(WDS_IMAGE_EXTENSIONS),
                           empty[:5])


def _apply_budget(cfg, pool: Pool) -> None:
    kd = cfg.TRAINER.PROMPTKD
    seed = kd.POOL_SEED if kd.POOL_SEED >= 0 else 0
    if kd.POOL_BUDGET and kd.POOL_BUDGET_PER_CLASS:
        raise ConfigError("Set TRAINER.PROMPTKD.POOL_BUDGET or POOL_BUDGET_PER_CLASS, not both.")
    if kd.POOL_BUDGET_PER_CLASS:
        if any(s.kind not in ("train", "train_base") for s in pool.sources):
            raise ConfigError("TRAINER.PROMPTKD.POOL_BUDGET_PER_CLASS needs labels, which only the split sources "
                              f"(train, train_base) have; the pool is {[s.name for s in pool.sources]}. Use "
                              "POOL_BUDGET (N images, no labels read).")
        keep = per_class_keep([d.impath for d in pool.items], [d.label for d in pool.items],
                              kd.POOL_BUDGET_PER_CLASS, seed)
        pool.labels_used = "per-class budget (labels of the split select the images)"
        pool.budget = {"per_class": kd.POOL_BUDGET_PER_CLASS, "seed": seed, "images": len(keep)}
    elif kd.POOL_BUDGET:
        names = pool.names()
        keep = budget_keep(names, kd.POOL_BUDGET, seed)
        pool.budget = {"images": len(keep), "requested": kd.POOL_BUDGET, "seed": seed}
        if kd.POOL_BUDGET > len(names):
            logger.warning("TRAINER.PROMPTKD.POOL_BUDGET %d is more than the pool's %d images: keeping all.",
                           kd.POOL_BUDGET, len(names))
    else:
        return
    listed = len(pool.items)
    if pool.streamed:
        names = pool.names()
        kept = {names[i] for i in keep if i >= listed}
        pool.listing = {s: [k for k in keys if f"{s}::{k}" in kept] for s, keys in pool.listing.items()}
    pool.items = [pool.items[i] for i in keep if i < listed]


def _hash_cache_path(cfg) -> str:
    return cfg.TRAINER.PROMPTKD.HASH_CACHE or default_hash_cache()


def _eval_images(trainer) -> dict[str, list[str]]:
    test = getattr(trainer, "eval_loader", None) or trainer.test_loader
    splits = {"test": [d.impath for d in test.dataset.data_source]}
    if trainer.dm.dataset.val:
        splits["val"] = [d.impath for d in trainer.dm.dataset.val]
    return splits


def _check_leakage(trainer, pool: Pool) -> None:
    """The pool's images against the test and val images, by sha256 of their bytes."""
    kd = trainer.cfg.TRAINER.PROMPTKD
    external = any(s.kind in ("folder", "wds") for s in pool.sources)
    if kd.LEAKAGE_CHECK == "off" or (kd.LEAKAGE_CHECK == "auto" and not external):
        why = "off (TRAINER.PROMPTKD.LEAKAGE_CHECK off)" if kd.LEAKAGE_CHECK == "off" else \
            "not needed (auto: split sources only, disjoint from the test split by construction)"
        pool.leakage = {"checked": False, "why": why}
        return
    splits = _eval_images(trainer)
    path = _hash_cache_path(trainer.cfg)
    with dist_.main_first():  # rank 0 hashes (and caches); the other ranks then read the cache
        cache = HashCache(path)
        hashes = {split: {p: cache.file(p) for p in paths} for split, paths in splits.items()}
        mine = {d.impath: cache.file(d.impath) for d in pool.items}
        if pool.streamed:
            members = getattr(pool, "member_hashes", None) or {s: cache.shard(s) for s in pool.shards}
            kept = set(pool.shard_names())
            mine.update({f"{s}::{k}": h for s, m in members.items() for k, h in m if f"{s}::{k}" in kept})
        hashed = cache.hashed
        if dist_.is_main():
            cache.save()
    overlap = find_overlap(mine, hashes)
    pool.leakage = {"checked": True, "splits": sorted(hashes), "hash": "sha256", "cache": path,
                    "files_hashed": hashed, "overlap": {s: len(p) for s, p in overlap.items()},
                    "allow_test_overlap": bool(kd.ALLOW_TEST_OVERLAP)}
    logger.info("Leakage check: %d pool images against %s by sha256 (%d files read, the rest from %s): %s",
                len(mine), ", ".join(f"{len(v)} {k}" for k, v in hashes.items()), hashed, path,
                ", ".join(f"{len(p)} in {s}" for s, p in overlap.items()) or "no overlap")
    for split, pairs in overlap.items():
        shown = "; ".join(f"{a} = {b}" for a, b in pairs[:SHOWN]) + (f"; and {len(pairs) - SHOWN} more"
                                                                       if len(pairs) > SHOWN else "")
        if split == "test" and not kd.ALLOW_TEST_OVERLAP:
            raise DataError(
                f"The unlabelled pool {[s.name for s in pool.sources]} holds {len(pairs)} image(s) of the test split "
                f"of {trainer.cfg.DATASET.NAME} (same bytes): {shown}. Distilling on test images inflates the "
                "reported accuracy. Remove them from the pool, or set TRAINER.PROMPTKD.ALLOW_TEST_OVERLAP True "
                "(recorded in run.json) to distil on them anyway.")
        logger.warning("The unlabelled pool holds %d image(s) of the %s split (same bytes)%s: %s", len(pairs), split,
                       " (allowed by TRAINER.PROMPTKD.ALLOW_TEST_OVERLAP)" if split == "test" else "", shown)


# --- WebDataset shards ---------------------------------------------------------------------
def shard_order(shards: list[str], seed: int, epoch: int) -> list[str]:
    """The epoch's shard order: a permutation that is a function of (seed, epoch)."""
    perm = torch.randperm(len(shards), generator=view_generator(seed, epoch, -2)).tolist()
    return [shards[i] for i in perm]


def worker_shards(shards, seed, epoch, rank, world, worker, workers) -> list[str]:
    return shard_order(shards, seed, epoch)[rank::world][worker::workers]


class ShardViewDataset(IterableDataset):
    """This rank's views of the pool's units in one epoch (call `set_epoch` first).

    `listing` maps each unit to its sample keys: a `.tar` shard to its image samples' keys, a
    `listed:NNNNN` unit (`Pool.units`) to image paths read from disk. Items are as
    `ViewDatasetWrapper`'s: img, label (-1), impath (`shard::key`, or a listed image's path),
    index (the sample's position in the listing, which names its view), epoch; an unreadable image
    is an UNREADABLE marker. Samples are shuffled within each worker by a buffer of
    `shuffle` samples drawn from (view seed, epoch, rank, worker). No view bank: a fresh view
    every epoch (TRAINER.PROMPTKD.VIEWS_PER_IMAGE needs a listed pool)."""

    views_per_image = 0
    batch_size = 1  # the loader's (build_shard_loader sets it): a short shard's marker fills a batch

    def __init__(self, listing: dict[str, list[str]], transform, view_seed: int, rank: int, world: int,
                 shuffle: int = 256):
        self.listing, self.transform, self.view_seed = listing, transform, int(view_seed)
        self.shards = list(listing)
        self.rank, self.world, self.shuffle, self.epoch = rank, world, shuffle, 0
        self.description = check_view_transform(transform)
        self.index, self.n_images = {}, 0
        for shard in self.shards:
            for key in listing[shard]:
                self.index[(shard, key)] = self.n_images
                self.n_images += 1

    def __len__(self) -> int:
        return self.n_images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _samples(self, units):
        """(unit, key, image bytes, or None for a listed image read from its path) of the units, in order."""
        wds = require("webdataset", "shards", "Streaming .tar shards (TRAINER.PROMPTKD.POOL wds:...)")
        for unit in units:
            if unit.startswith(LISTED_UNIT):
                for path in self.listing[unit]:
                    yield unit, path, None
                continue
            # the shards are this worker's already: no node / worker splitting inside webdataset
            stream = wds.WebDataset([unit], shardshuffle=False, nodesplitter=None, workersplitter=None,
                                    empty_check=False)
            seen, expected = set(), len(self.listing[unit])
            try:
                for sample in stream:
                    url, key = sample.get("__url__"), sample.get("__key__")
                    if (url, key) not in self.index:  # not an image sample, or left out by the budget
                        continue
                    ext = next((e for e in WDS_IMAGE_EXTENSIONS if e in sample), None) or next(
                        (k for k in sample if k.lower() in WDS_IMAGE_EXTENSIONS), None)
                    if ext is None:
                        continue  # counted as an image sample, streamed without one: named below
                    seen.add(key)
                    yield url, key, sample[ext]
            except Exception as err:  # noqa: BLE001  (webdataset / tarfile on a damaged shard)
                yield SHARD_PROBLEM, unit, (f"WebDataset shard {unit} could not be read to its end ({type(err).__name__}: "
                                            f"{err}) after {len(seen)} of its {expected} image samples. {SHARD_FIX}")
                return
            if len(seen) < expected:
                lost = [k for k in self.listing[unit] if k not in seen]
                yield SHARD_PROBLEM, unit, (
                    f"WebDataset shard {unit} yielded {len(seen)} of the {expected} image samples the pool counted "
                    f"in it (missing: {', '.join(lost[:3])}{' ...' if len(lost) > 3 else ''}): it was cut short or "
                    f"changed since it was counted. {SHARD_FIX}")
                return

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = worker_shards(self.shards, self.view_seed, self.epoch, self.rank, self.world, worker, workers)
        rng = random.Random(f"{self.view_seed}:{self.epoch}:{self.rank}:{worker}")
        buffer = []
        for sample in self._samples(shards):
            if sample[0] == SHARD_PROBLEM:  # a full batch of markers, so drop_last cannot drop it
                yield from ({SHARD_PROBLEM: sample[2]} for _ in range(self.batch_size))
                return
            buffer.append(sample)
            if len(buffer) >= max(self.shuffle, 1):
                yield self._item(buffer.pop(rng.randrange(len(buffer))))
        rng.shuffle(buffer)
        for sample in buffer:
            yield self._item(sample)

    def _item(self, sample):
        url, key, data = sample
        name, index = (key if data is None else f"{url}::{key}"), self.index[(url, key)]
        try:
            with Image.open(key if data is None else io.BytesIO(data)) as image:
                img0 = image.convert("RGB")
        except MemoryError:
            raise
        except Exception as err:
            return {UNREADABLE: (name, f"{type(err).__name__}: {err}")}
        with seeded_view(self.view_seed, self.epoch, index):
            img = self.transform(img0)
        return {"img": img, "label": -1, "domain": 0, "impath": name, "index": index, "epoch": self.epoch,
                "view": self.epoch}  # a streamed pool has no view bank: the view of an epoch is the epoch

    def steps(self, batch_size: int, num_workers: int, epochs: int) -> int:
        """Full batches this rank is sure to get in every epoch (the minimum over ranks and
        epochs): the DataLoader batches each worker's stream on its own and drops its tail."""
        workers = max(num_workers, 1)
        counts = []
        for epoch in range(max(epochs, 1)):
            for rank in range(self.world):
                counts.append(sum(sum(len(self.listing[s]) for s in
                                      worker_shards(self.shards, self.view_seed, epoch, rank, self.world, w, workers))
                                  // batch_size for w in range(workers)))
        return min(counts)


def collate_shard_batch(items: list[dict]) -> dict:
    """`collate_checked`, or {SHARD_PROBLEM: [messages]} for a batch holding a short shard's marker."""
    problems = [it[SHARD_PROBLEM] for it in items if SHARD_PROBLEM in it]
    return {SHARD_PROBLEM: problems} if problems else collate_checked(items)


class ShardEpochLoader:
    """A DataLoader over a `ShardViewDataset` that yields exactly `steps` batches an epoch;
    `sampler.set_epoch` (what the epoch loop calls) sets the dataset's epoch."""

    def __init__(self, dataset: ShardViewDataset, batch_size: int, num_workers: int, steps: int, pin_memory: bool):
        self.dataset, self.batch_size, self.steps, self.drop_last = dataset, batch_size, steps, True
        self.sampler = dataset  # has set_epoch
        self.loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=True,
                                 collate_fn=collate_shard_batch, pin_memory=pin_memory)
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_checked, pin_memory

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        got = 0
        for batch in itertools.islice(iter(self.loader), self.steps):
            if SHARD_PROBLEM in batch:
                raise DataError(batch[SHARD_PROBLEM][0])
            got += 1
            yield batch
        if got < self.steps:  # a shard's marker can only be missed if it ended a worker's stream
            raise DataError(f"The pool's shards gave {got} of the epoch's {self.steps} batches: a WebDataset shard "
                            f"yielded fewer images than the pool counted in it. {SHARD_FIX}")


def build_shard_loader(cfg, pool: Pool, transform, view_seed: int):
    """(dataset, sampler, loader) for a streamed pool, as `build_view_loader` returns them."""
    if cfg.DATALOADER.K_TRANSFORMS != 1:
        raise ConfigError(f"DATALOADER.K_TRANSFORMS is {cfg.DATALOADER.K_TRANSFORMS}; PromptKD distils one view "
                          "per image and step: set it to 1.")
    world, rank = dist_.world_size(), dist_.rank()
    units = pool.units()
    if len(units) < world:
        raise ConfigError(f"The pool has {len(units)} unit(s) ({len(pool.shards)} WebDataset shard(s)) for {world} "
                          "processes: each process reads whole units, so give at least as many shards as processes "
                          "(more, smaller shards balance better).")
    dataset = ShardViewDataset(units, transform, view_seed, rank, world)
    batch, workers = cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.NUM_WORKERS
    dataset.batch_size = batch
    steps = dataset.steps(batch, workers, cfg.OPTIM.MAX_EPOCH)
    cap = cfg.TRAINER.PROMPTKD.POOL_EPOCH_IMAGES
    if cap:
        steps = min(steps, cap // (batch * world))
    if steps == 0:
        raise ConfigError(f"The pool's shards give a process no full batch of DATALOADER.TRAIN_X.BATCH_SIZE {batch} "
                          f"in some epoch ({len(dataset)} images in {len(units)} units, {world} process(es), "
                          f"{max(workers, 1)} loader worker(s) each, POOL_EPOCH_IMAGES {cap}): use a smaller batch, "
                          "fewer DATALOADER.NUM_WORKERS, or more images per shard.")
    logger.info("Streamed pool: %d images in %d units (%d WebDataset shards, %d listed images); %d steps of %d per "
                "process and epoch (%d images an epoch over %d process(es))", len(dataset), len(units),
                len(pool.shards), len(pool.items), steps, batch, steps * batch * world, world)
    loader = ShardEpochLoader(dataset, batch, workers, steps, torch.cuda.is_available() and cfg.USE_CUDA)
    return dataset, dataset, loader
