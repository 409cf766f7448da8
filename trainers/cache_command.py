"""Write the teacher-embedding cache of a PromptKD student run (stage 2 without the teacher).

    promptkd cache <the student run's train arguments>

takes exactly a student run's command line (`--root`, `--seed`, configs, `KEY VALUE` ...,
including TRAINER.PROMPTKD.TEACHER_CACHE DIR) and runs only the teacher's image side, under
`no_grad` and the run's PREC, over every view of every epoch (OPTIM.MAX_EPOCH; with a view bank,
TRAINER.PROMPTKD.VIEWS_PER_IMAGE = K > 0, the K views of every image once) at its own batch
size (TRAINER.PROMPTKD.TEACHER_CACHE_BATCH_SIZE), storing the normalised embeddings
(TEACHER_CACHE_DTYPE, fp16 by default) in the core format of `promptkd/teacher_cache.py`.
Interrupted, the same command resumes. The student run then reads the cache: the same command
with `promptkd train`. `fill_views` (trainers/cache_filler.py) is shared with online runs that fill the cache as they
go (TEACHER_CACHE_WRITE).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from promptkd.errors import ConfigError, DataError
from promptkd.trainers import train  # the student run's command line, config files and overrides
from promptkd.trainers.cache_filler import cache_slots, fill_views

logger = logging.getLogger("promptkd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `cache` verb's options: exactly the student run's `promptkd train` arguments."""
    train.add_arguments(parser)
    parser.description = __doc__


def run(args: argparse.Namespace) -> int:
    """`promptkd cache <the student run's train arguments>`: fill the cache, then check it is complete."""
    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed

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
    for writer in trainer.cache_writers():  # one per teacher (TEACHER_DIRS: each its own cache folder)
        start = time.time()
        n = fill_views(writer, range(cache_slots(cfg)), progress=True)
        seconds = time.time() - start
        cache = writer.cache
        if not cache.is_complete():
            missing = len(cache.missing_shards(range(cache.epochs)))
            raise DataError(f"The teacher cache {cache.directory} is incomplete ({missing} shards missing): some "
                            "images could not be read (see the list above). Fix them and run the command again.")
        logger.info("Teacher cache %s: complete, %d images x %d %s, %s; this run embedded %d views in %.1f s%s",
                    cache.directory, cache.n_images, cache.epochs, "views each" if cache.views_per_image else "epochs",
                    cache.dtype, n, seconds,
                    f" ({n / seconds:.1f} views/s)." if n and seconds > 0 else ".")
    return 0
