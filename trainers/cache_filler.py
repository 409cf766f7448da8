"""The teacher cache's side of a PromptKD run: which views, of which teacher, and filling them.

`cache_identity` is what a cache records about the run that wrote it (teacher export, image
list, views, precision), so that a run refuses a cache of another; `fill_views` embeds the views
of the given epochs with the teacher's image side and stores them. Used by the PromptKD trainer
(TEACHER_CACHE_WRITE fills the cache while it trains) and by the writer command,
`promptkd cache` (trainers/cache_command.py). The file format is
`promptkd/teacher_cache.py`.
"""
from __future__ import annotations

import hashlib
import logging
import os

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from promptkd.teacher_cache import TOPK_KEY, topk_spec
from promptkd.trainers.data import UNREADABLE, collate_checked

logger = logging.getLogger("promptkd")


def teacher_export_id(side) -> str:
    """Hash of what the exported teacher adds to its weights: visual prompts and logit scale."""
    h = hashlib.sha256()
    for p in side.prompts:
        t = torch.as_tensor(p).detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    h.update(repr(float(side.logit_scale)).encode())
    return h.hexdigest()[:16]


def image_list_id(cfg, data_source) -> str:
    """Hash of the train image paths (relative to DATASET.ROOT) in order."""
    root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
    h = hashlib.sha256()
    for item in data_source:
        h.update(os.path.relpath(item.impath, root).encode() + b"\n")
    return h.hexdigest()[:16]


def class_vectors_id(vectors) -> str:
    t = torch.as_tensor(vectors).detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(str(tuple(t.shape)).encode() + t.numpy().tobytes()).hexdigest()[:16]


def cache_identity(cfg, side, data_source, view_dataset, precision: str, vectors=None) -> dict:
    """What a cached embedding depends on (compared key by key before reading or resuming).
    A topk cache (TEACHER_CACHE_DTYPE topk) stores logits, so it depends on k, the class
    vectors and the temperature too."""
    identity = {"teacher_fingerprint": side.fingerprint, "teacher_export": teacher_export_id(side),
            "width": int(side.width), "dataset": cfg.DATASET.NAME, "n_images": len(data_source),
            "image_list": image_list_id(cfg, data_source), "view_seed": view_dataset.view_seed,
            "transform": view_dataset.description, "precision": precision,
            "views_per_image": view_dataset.views_per_image}
    kd = cfg.TRAINER.PROMPTKD
    if kd.TEACHER_CACHE_DTYPE == "topk":
        identity[TOPK_KEY] = topk_spec(kd.TEACHER_CACHE_TOPK, len(vectors), kd.TEMPERATURE, class_vectors_id(vectors))
    return identity


def writer_batch_size(cfg) -> int:
    kd = cfg.TRAINER.PROMPTKD
    return kd.TEACHER_CACHE_BATCH_SIZE if kd.TEACHER_CACHE_BATCH_SIZE > 0 else 4 * cfg.DATALOADER.TRAIN_X.BATCH_SIZE


def cache_slots(cfg) -> int:
    """The cache's slots per image: VIEWS_PER_IMAGE when > 0 (the view bank), else the epochs."""
    return cfg.TRAINER.PROMPTKD.VIEWS_PER_IMAGE or cfg.OPTIM.MAX_EPOCH


def fill_views(trainer, epochs, progress: bool = False, drawn: bool = False) -> int:
    """Run the trainer's teacher over the views missing from its cache; returns the number of
    views embedded. `epochs` are cache slots (all of them: the writer), or with `drawn` the
    epochs whose drawn views must be stored (an online run's epoch end: the views its last batch
    dropped; with a view bank, those of epoch e are `view_number(seed, e, image, K)`).
    Unreadable images follow DATALOADER.SKIP_UNREADABLE."""
    cache, cfg = trainer.cache, trainer.cfg
    dataset, size = trainer.view_dataset, writer_batch_size(cfg)
    if not dataset.views_per_image:  # slot = epoch: keys (epoch, index)
        batches = cache.plan(epochs, size)
    elif drawn:  # keys (epoch, index, view), in shard order
        todo = sorted({(dataset.view_of(e, i), i) for e in epochs for i in range(cache.n_images)})
        todo = [(-1, i, v) for v, i in todo if not cache.has(v, i)]
        batches = [todo[k:k + size] for k in range(0, len(todo), size)]
    else:
        batches = [[(-1, i, v) for v, i in b] for b in cache.plan(epochs, size)]
    if not batches:
        return 0
    loader = DataLoader(trainer.view_dataset, batch_sampler=batches, num_workers=cfg.DATALOADER.NUM_WORKERS,
                        collate_fn=collate_checked, pin_memory=torch.cuda.is_available() and cfg.USE_CUDA)
    done = 0
    with tqdm(total=sum(map(len, batches)), unit="view", desc="teacher cache", dynamic_ncols=True,
              disable=None if progress else True) as bar:
        for batch in loader:
            n = len(batch.get("index", [])) + len(batch.get(UNREADABLE, []))
            batch = trainer.screen_batch(batch, "train")
            if batch is not None:
                with trainer.autocast():
                    embeddings = trainer.teacher.embed(batch["img"].to(trainer.device, non_blocking=True))
                cache.add(batch["view"], batch["index"], embeddings)
                done += len(batch["index"])
            bar.update(n)
    return done
