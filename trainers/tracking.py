"""Weights & Biases tracking of a run (config group LOG.WANDB; off by default).

With LOG.WANDB.ENABLED True, rank 0 (only) opens one W&B run when training starts (or when
--eval-only evaluates) and logs: the full config and the run record (run.json) as the W&B
config; every training step's losses (`train/<loss>`, with `iteration` and `epoch`), each epoch's
mean losses and LR (`lr`); every evaluation's metrics (`test/<metric>`); and at the end the
base / novel / HM (or accuracy) as the run's summary and a one-row table `results`. TensorBoard
logging (Dassl's) goes on as before.

A resumed run continues the same W&B run: its id is kept in `<OUTPUT_DIR>/wandb-run-id`
and reused (`resume="allow"`) whenever training resumes from a checkpoint there; a run
trained from scratch starts a new W&B run. LOG.WANDB.MODE "" leaves the mode to wandb (the
WANDB_MODE environment variable, else online); "offline" writes the run under the W&B folder
(WANDB_DIR, default the run's OUTPUT_DIR) for a later `wandb sync`. wandb's service process
writes the end of an offline run's `.wandb` log a moment after `finish()` returns; it completes
the file on its own, also when this process exits (or is killed) right after, so no history is
lost, but a reader in the same process waits for the file's `exit` record (tests/test_tracking.py).
"""
from __future__ import annotations

import logging
import os

from promptkd import distributed as dist_
from promptkd.errors import ConfigError
from promptkd.extras import require
from promptkd.io import atomic_write_text, read_text
from promptkd.records import plain, protocol

logger = logging.getLogger("promptkd")

RUN_ID_FILE = "wandb-run-id"
MODES = ("", "online", "offline", "disabled")


def _wandb():
    return require("wandb", "tracking", "LOG.WANDB.ENABLED True", ", or set LOG.WANDB.ENABLED False")


def check_cfg(cfg) -> None:
    """Before anything is built: a bad mode, or wandb missing while the setting is on, stops the run."""
    w = cfg.LOG.WANDB
    if w.MODE not in MODES:
        raise ConfigError(f"LOG.WANDB.MODE is '{w.MODE}'; allowed values: {', '.join(repr(m) for m in MODES)} "
                          "('' = wandb's own default, the WANDB_MODE environment variable).")
    if w.ENABLED and dist_.is_main():
        _wandb()


class Tracker:
    """One W&B run of one trainer (rank 0)."""

    def __init__(self, run):
        self.run = run

    @classmethod
    def start(cls, trainer, resumed: bool, job_type: str = "train") -> "Tracker | None":
        cfg = trainer.cfg
        w = cfg.LOG.WANDB
        if not w.ENABLED or not dist_.is_main():
            return None
        wandb = _wandb()
        id_file = os.path.join(cfg.OUTPUT_DIR, RUN_ID_FILE)
        run_id = read_text(id_file, what="W&B run id").strip() if resumed and os.path.isfile(id_file) else None
        record = {k: v for k, v in (trainer.run_record or {}).items() if k != "config"}
        name = w.NAME or f"{cfg.TRAINER.NAME}-{cfg.DATASET.NAME}-seed{cfg.SEED}"
        run = wandb.init(project=w.PROJECT or None, entity=w.ENTITY or None, name=name, tags=list(w.TAGS) or None,
                         mode=w.MODE or None, id=run_id, resume="allow" if run_id else None, job_type=job_type,
                         dir=os.environ.get("WANDB_DIR") or cfg.OUTPUT_DIR,
                         config={**plain(cfg), "run_record": plain(record)}, allow_val_change=True)
        atomic_write_text(id_file, run.id + "\n")
        logger.info("W&B run %s (%s, project %s)%s", run.id, name, w.PROJECT, ", resumed" if resumed else "")
        return cls(run)

    def log(self, metrics: dict, **axes) -> None:
        self.run.log({**metrics, **axes})

    def report(self, trainer, metrics: dict) -> None:
        """The evaluation's figures: summary and a one-row results table."""
        cfg = trainer.cfg
        row = {"trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME, "seed": cfg.SEED,
               "protocol": protocol(cfg), **metrics}
        wandb = _wandb()
        self.run.log({"results": wandb.Table(columns=list(row), data=[list(row.values())])})
        self.run.summary.update({f"final/{k}": v for k, v in metrics.items()})

    def finish(self) -> None:
        self.run.finish()
