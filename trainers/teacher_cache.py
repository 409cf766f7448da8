"""Write the teacher-embedding cache of a PromptKD student run (stage 2 without the teacher).

    python -m trainers.teacher_cache write <the student run's train.py arguments>

takes exactly a student run's command line (`--root`, `--seed`, configs, `KEY VALUE` ...,
including TRAINER.PROMPTKD.TEACHER_CACHE DIR) and runs only the teacher's image side, under
`no_grad` and the run's PREC, over every view of every epoch (OPTIM.MAX_EPOCH) at its own batch
size (TRAINER.PROMPTKD.TEACHER_CACHE_BATCH_SIZE), storing the normalised embeddings
(TEACHER_CACHE_DTYPE, fp16 by default) in the core format of `promptkd/teacher_cache.py`.
Interrupted, the same command resumes. The student run then reads the cache: the same command
with `train.py`. `fill_views` is shared with online runs that fill the cache as they go
(TEACHER_CACHE_WRITE).
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from promptkd.errors import ConfigError, DataError, UserError, run_cli
from trainers.data import UNREADABLE, collate_checked

logger = logging.getLogger("promptkd")

USAGE = "usage: python -m trainers.teacher_cache write <train.py arguments of the student run> [--debug]"


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


def cache_identity(cfg, side, data_source, view_dataset, precision: str) -> dict:
    """What a cached embedding depends on (compared key by key before reading or resuming)."""
    return {"teacher_fingerprint": side.fingerprint, "teacher_export": teacher_export_id(side),
            "width": int(side.width), "dataset": cfg.DATASET.NAME, "n_images": len(data_source),
            "image_list": image_list_id(cfg, data_source), "view_seed": view_dataset.view_seed,
            "transform": view_dataset.description, "precision": precision}


def writer_batch_size(cfg) -> int:
    kd = cfg.TRAINER.PROMPTKD
    return kd.TEACHER_CACHE_BATCH_SIZE if kd.TEACHER_CACHE_BATCH_SIZE > 0 else 4 * cfg.DATALOADER.TRAIN_X.BATCH_SIZE


def fill_views(trainer, epochs, progress: bool = False) -> int:
    """Run the trainer's teacher over the views of `epochs` missing from its cache; returns
    the number of views embedded. Unreadable images follow DATALOADER.SKIP_UNREADABLE."""
    cache, cfg = trainer.cache, trainer.cfg
    batches = cache.plan(epochs, writer_batch_size(cfg))
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
                    embeddings = trainer.teacher.embed(batch["img"].to(trainer.device))
                cache.add(batch["epoch"], batch["index"], embeddings)
                done += len(batch["index"])
            bar.update(n)
    return done


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] != "write":
        raise UserError(USAGE)
    import train  # the student run's command line, config files and overrides
    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed

    args = train.parse_args(argv[1:])
    args.trainer = args.trainer or "PromptKD"
    args.opts = list(args.opts or []) + ["TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True"]
    cfg = train.setup_cfg(args)
    if cfg.TRAINER.NAME != "PromptKD":
        raise ConfigError(f"--trainer {cfg.TRAINER.NAME}: the teacher cache is for PromptKD student runs.")
    if not cfg.TRAINER.PROMPTKD.TEACHER_CACHE:
        raise ConfigError("Set TRAINER.PROMPTKD.TEACHER_CACHE to the folder to write the cache to.")
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)
    from promptkd import determinism
    determinism.configure(cfg.TRAIN.DETERMINISTIC, cfg.USE_CUDA)  # as train.py does
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    trainer = build_trainer(cfg)
    start = time.time()
    n = fill_views(trainer, range(cfg.OPTIM.MAX_EPOCH), progress=True)
    seconds = time.time() - start
    cache = trainer.cache
    if not cache.is_complete():
        missing = len(cache.missing_shards(range(cache.epochs)))
        raise DataError(f"The teacher cache {cache.directory} is incomplete ({missing} shards missing): some "
                        "images could not be read (see the list above). Fix them and run the command again.")
    logger.info("Teacher cache %s: complete, %d images x %d epochs, %s; this run embedded %d views in %.1f s%s",
                cache.directory, cache.n_images, cache.epochs, cache.dtype, n, seconds,
                f" ({n / seconds:.1f} views/s)." if n and seconds > 0 else ".")
    return 0


if __name__ == "__main__":
    run_cli(main)
