"""Our checkpoint format on Dassl's trainer: learnable-only state, exact resume, retention.

A checkpoint (`VLPromptLearner/model.pth.tar-N`) holds what trains (prompts, projector,
BatchNorm buffers), the optimiser, LR schedule and RNG states, and plain numbers, so it loads with
`torch.load(weights_only=True)`; the `checkpoint` pointer file names the last complete one and is
written after it, so a killed run resumes from a whole checkpoint. Published PromptKD / PromptSRC
files are read by `load_published`. `CheckpointMixin` goes before Dassl's `TrainerX` in a
trainer's bases (`trainers/base.py`).
"""
from __future__ import annotations

import logging
import math
import os

from promptkd import distributed as dist_
from promptkd.checkpoints import PUBLISHED_FIX, learnable_state_dict, load_learnable_state_dict
from promptkd.errors import CheckpointError, ConfigError, MissingFileError
from promptkd.io import atomic_save, atomic_write_text, load_torch, read_text, remove_stale_tmp
from promptkd.rng import rng_state, set_rng_state

logger = logging.getLogger("promptkd")

MODEL_NAME = "VLPromptLearner"  # the folder name of the published checkpoints
CHECKPOINT_FORMAT = "promptkd-dassl/1"
POINTER_FILE = "checkpoint"  # Dassl's: the name of the latest checkpoint in the folder
#: a full disk while checkpointing: the pointer still names the last complete checkpoint
RESUME_FIX = "run the same train.py command again: it resumes from the last complete checkpoint."


def checkpoint_fix(folder: str) -> str:
    """What to do with a damaged checkpoint in `folder` (only training writes one)."""
    return (f"Only training writes it again: delete it and write the name of an earlier complete checkpoint "
            f"(model.pth.tar-N) into {os.path.join(folder, POINTER_FILE)}, or delete that file too to train from "
            "scratch, then run the same train.py command again.")


def pointer_fix(folder: str) -> str:
    return (f"Write the name of the last complete checkpoint in {folder} into it (e.g. `echo model.pth.tar-N > "
            f"{os.path.join(folder, POINTER_FILE)}`), or delete it to train from scratch; then run the same "
            "train.py command again.")


class CheckpointMixin:
    """save_model / resume_model_if_exist / load_model in our format (overriding Dassl's)."""

    def extra_state(self) -> dict:
        """Trainer state beyond model / optimiser / scheduler (e.g. GPA sums)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        folder = os.path.join(directory, MODEL_NAME)
        name = model_name or f"model.pth.tar-{epoch + 1}"
        self.model_epoch, self.checkpoint = epoch + 1, os.path.join(folder, name)
        state = {
            "format": CHECKPOINT_FORMAT, "trainer": self.cfg.TRAINER.NAME,
            "state_dict": learnable_state_dict(self.model), "epoch": epoch + 1,
            "optimizer": self.optim.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "val_result": val_result, "best_result": self.best_result if math.isfinite(self.best_result) else None,
            "extra": self.extra_state(), "rng": rng_state(self.device),
        }
        if dist_.is_distributed():  # each rank's RNG, so a resumed run draws what it would have
            state["rng_per_rank"] = dist_.all_gather_objects(state["rng"])
        if dist_.is_main():  # one writer; the others wait below until the file is there
            self.write_checkpoint(state, folder, name, model_name)
        dist_.barrier()

    def write_checkpoint(self, state, folder, name, model_name):
        atomic_save(state, os.path.join(folder, name), fix=RESUME_FIX)
        if not model_name:
            previous = _read_pointer(folder)
            _write_pointer(folder, name)
            freq = self.cfg.TRAIN.CHECKPOINT_FREQ
            if previous and previous != name and previous.startswith("model.pth.tar-"):
                prev_epoch = int(previous.rsplit("-", 1)[1])
                if not (freq > 0 and prev_epoch % freq == 0):
                    _remove(os.path.join(folder, previous))
        logger.info("Checkpoint saved to %s", os.path.join(folder, name))

    def resume_model_if_exist(self, directory):
        folder = os.path.join(directory, MODEL_NAME)
        if dist_.is_main():  # a run killed while saving leaves its temp file behind
            remove_stale_tmp(folder)
        name = _read_pointer(folder)
        if not name:
            logger.info("No checkpoint in %s: training from scratch", folder)
            return 0
        ckpt = self._read_own(os.path.join(folder, name))
        load_learnable_state_dict(self.model, ckpt["state_dict"], os.path.join(folder, name))
        self.model_epoch, self.checkpoint = ckpt["epoch"], os.path.join(folder, name)
        self.optim.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.load_extra_state(ckpt.get("extra") or {})
        if ckpt.get("best_result") is not None:
            self.best_result = ckpt["best_result"]
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(per_rank) != dist_.world_size():
            logger.warning("%s was written by %d process(es), this run has %d: training continues from its "
                           "weights, but data order and augmentation differ from an uninterrupted run.",
                           os.path.join(folder, name), len(per_rank), dist_.world_size())
        set_rng_state(per_rank[dist_.rank()] if len(per_rank) == dist_.world_size() else ckpt["rng"], self.device)
        logger.info("Resumed from %s (epoch %d done)", os.path.join(folder, name), ckpt["epoch"])
        return ckpt["epoch"]

    def load_model(self, directory, epoch=None, best=False):
        """Load weights for evaluation: epoch N, else model-best if asked or present, else the latest."""
        if not directory:
            raise ConfigError("No model folder to load from: give --model-dir RUN_DIR (a training run's --output-dir).")
        folder = os.path.join(directory, MODEL_NAME)
        if not os.path.isdir(folder):
            raise MissingFileError(
                f"--model-dir {directory} holds no checkpoints (no {folder} folder): give the --output-dir of a "
                f"training run of {self.cfg.TRAINER.NAME}, which keeps {MODEL_NAME}/model.pth.tar-N there.")
        if epoch is not None:
            name = f"model.pth.tar-{epoch}"
        elif best or os.path.isfile(os.path.join(folder, "model-best.pth.tar")):
            name = "model-best.pth.tar"
        else:
            name = _read_pointer(folder) or "model-best.pth.tar"
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise MissingFileError(f"No checkpoint at {path}: check --model-dir / --load-epoch "
                                   f"(expected {MODEL_NAME}/model.pth.tar-N or model-best.pth.tar).")
        self.load_checkpoint_file(path)

    def load_checkpoint_file(self, path: str):
        fix = f"{checkpoint_fix(os.path.dirname(path))} A published checkpoint: {PUBLISHED_FIX}"
        ckpt = load_torch(path, what="checkpoint", fix=fix, trusted=self.cfg.MODEL.TRUST_PICKLED_CHECKPOINTS)
        self.model_epoch, self.checkpoint = ckpt.get("epoch") if isinstance(ckpt, dict) else None, path
        if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
            if ckpt.get("trainer") not in (None, self.cfg.TRAINER.NAME):
                raise ConfigError(f"{path} was written by trainer {ckpt['trainer']}, not "
                                  f"{self.cfg.TRAINER.NAME}: pass the matching --trainer or --model-dir.")
            load_learnable_state_dict(self.model, ckpt["state_dict"], path)
            self.load_extra_state(ckpt.get("extra") or {})
            logger.info("Loaded %s (epoch %s)", path, ckpt["epoch"])
        else:
            self.load_published(path)

    def load_published(self, path: str):
        raise ConfigError(f"{path} is not a checkpoint of this plugin and {self.cfg.TRAINER.NAME} "
                          "cannot import it.")

    def _read_own(self, path: str) -> dict:
        fix = checkpoint_fix(os.path.dirname(path))
        ckpt = load_torch(path, what="checkpoint", fix=fix)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path} is not a resumable checkpoint of this plugin. {fix}")
        return ckpt



def _read_pointer(folder: str) -> str | None:
    """The checkpoint the pointer file names (None without a pointer file). A pointer that is
    empty, damaged or names a file that is not there is an error: resuming from scratch would
    silently drop the epochs trained."""
    path = os.path.join(folder, POINTER_FILE)
    if not os.path.isfile(path):
        return None
    fix = pointer_fix(folder)
    lines = read_text(path, what="checkpoint pointer file", fix=fix, error=CheckpointError).splitlines()
    name = lines[0].strip() if lines else ""
    if not name or os.path.basename(name) != name:
        raise CheckpointError(f"{path} does not name a checkpoint file (it holds {name[:80]!r}). {fix}")
    if not os.path.isfile(os.path.join(folder, name)):
        raise CheckpointError(f"{path} names {name}, which is not in {folder}. {fix}")
    return name


def _write_pointer(folder: str, name: str) -> None:
    atomic_write_text(os.path.join(folder, POINTER_FILE), name + "\n", fix=RESUME_FIX)


def _remove(path: str) -> None:
    if os.path.isfile(path):
        os.remove(path)
