"""Dassl plumbing shared by our trainers: config checks, data loaders, precision, optimiser and
LR schedule, and the epoch loop. The checkpoint format and exact resume are
`trainers/checkpointing.py`, evaluation with its gather across ranks `trainers/evaluate.py`;
`PromptTrainer` combines them.

A trainer subclasses `PromptTrainer`, sets `CFG_NODE` (its `TRAINER.<NODE>` config), builds
its model in `build_model` (calling `self.register_trainable`) and implements
`forward_backward` and `model_inference` (logits over *all* classes of the dataset).
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import time

import torch
from dassl.data.data_manager import DataManager, build_data_loader
from dassl.data.datasets import build_dataset
from dassl.engine import TrainerX
from dassl.utils import set_random_seed
from tqdm import tqdm

from promptkd import distributed as dist_
from promptkd import openai_clip, records
from promptkd.datasets import serving as served_by
from promptkd.backbones import RESIZE_MODES
from promptkd.errors import ConfigError, DataError, MissingFileError
from promptkd.evaluation import num_base_classes
from promptkd.losses import StepLog
from promptkd.precision import PRECISIONS, Precision, configure_matmul
from promptkd.schedule import build_lr_scheduler
from promptkd.trainers.checkpointing import MODEL_NAME, CheckpointMixin
from promptkd.trainers.config import GRAD_CHECKPOINTS, MODEL_SELECTIONS, PROTOCOLS
from promptkd.trainers.data import (UNREADABLE, CheckedDatasetWrapper, check_loader, test_transform, too_many_unreadable,
                                    unreadable_error)
from promptkd.trainers.rank_loaders import check_sampler, distribute_loaders, keep_workers
from promptkd.trainers.evaluate import EvaluationMixin
from promptkd.trainers.run_logging import ensure_logging
from promptkd.trainers.tracking import Tracker, check_cfg as check_tracking

logger = logging.getLogger("promptkd")
#: TRAIN.COMPILE: "" (eager) or a torch.compile mode
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class PromptTrainer(CheckpointMixin, EvaluationMixin, TrainerX):
    CFG_NODE = ""  # e.g. "PROMPTKD": the trainer's own TRAINER.<node> settings
    run_record = None  # train.py's run.json record (promptkd.records); evaluation then writes result.json
    model_epoch, checkpoint = 0, None  # the epoch / file of the weights now in the model (0, None: as built)
    tracker = None  # LOG.WANDB: the W&B run (rank 0), trainers/tracking.py
    training_started = False  # before_train ran (so load_model is model selection, not --eval-only)
    host_eval_only = False  # a host's train.py called load_model for --eval-only (docs/plugin.md)

    def __init__(self, cfg):
        # Under a host codebase's train.py (docs/plugin.md) no run record was started and the
        # `promptkd` logger has no handler: both are set up here, as our train.py does.
        self.host_run = records.started_run(cfg) is None
        if self.host_run and dist_.is_main():
            ensure_logging()
        super().__init__(cfg)  # Dassl builds the data and the model here
        if dist_.is_distributed() and cfg.SEED >= 0:  # each process draws its own augmentations
            set_random_seed(cfg.SEED + dist_.rank())
        run = records.started_run(cfg) or records.start_run(cfg, eval_only=False)
        fields = getattr(self, "record_fields", dict)()  # e.g. PromptKD's student, objective and pool
        self.run_record = records.update_run(cfg, run, teacher=self.teacher_identity(), **fields)

    @property
    def tcfg(self):
        return self.cfg.TRAINER[self.CFG_NODE]

    def teacher_identity(self) -> dict | None:
        """The teacher this trainer distils from, for run.json (None: it distils from none)."""
        return None

    # --- configuration ------------------------------------------------------------------
    def check_cfg(self, cfg):
        node = cfg.TRAINER[self.CFG_NODE]
        check_tracking(cfg)
        check_allowed(f"TRAINER.{self.CFG_NODE}.PREC", node.PREC, PRECISIONS)
        check_allowed(f"TRAINER.{self.CFG_NODE}.GRAD_CHECKPOINT", node.get("GRAD_CHECKPOINT", "off"), GRAD_CHECKPOINTS)
        check_allowed("TRAINER.PROTOCOL", records.protocol(cfg), PROTOCOLS)
        check_allowed("TEST.MODEL_SELECTION", cfg.TEST.MODEL_SELECTION, MODEL_SELECTIONS)
        check_allowed("DATASET.SUBSAMPLE_CLASSES", cfg.DATASET.SUBSAMPLE_CLASSES, ("all", "base", "new"))
        for key in ("N_CTX_VISION", "N_CTX_TEXT"):
            if node.get(key, 1) < 1:
                raise ConfigError(f"TRAINER.{self.CFG_NODE}.{key} must be >= 1, got {node[key]}.")
        for key in ("PROMPT_DEPTH_VISION", "PROMPT_DEPTH_TEXT"):
            if node.get(key, 0) < 0:
                raise ConfigError(f"TRAINER.{self.CFG_NODE}.{key} must be >= 0, got {node[key]}.")
        check_allowed("TRAIN.COMPILE", cfg.TRAIN.COMPILE, COMPILE_MODES)
        if cfg.TRAIN.READ_LOSS_EVERY < 1 or not 0 <= cfg.TRAIN.MAX_SKIPPED_STEPS_SHARE <= 1:
            raise ConfigError(f"TRAIN.READ_LOSS_EVERY must be >= 1 (got {cfg.TRAIN.READ_LOSS_EVERY}) and "
                              f"TRAIN.MAX_SKIPPED_STEPS_SHARE a share in [0, 1] (got {cfg.TRAIN.MAX_SKIPPED_STEPS_SHARE}).")
        share = cfg.DATALOADER.MAX_UNREADABLE_SHARE
        if not 0 <= share <= 1:
            raise ConfigError(f"DATALOADER.MAX_UNREADABLE_SHARE must be a share in [0, 1] (e.g. 0.01 for 1%), "
                              f"got {share}.")
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        if not os.path.isdir(root):
            raise MissingFileError(f"DATASET.ROOT {root} does not exist (--root): point it at the "
                                   "folder holding the datasets (see DATASETS.md).")
        if cfg.TEST.MODEL_SELECTION == "best_base_test" and records.protocol(cfg) != "base2novel":
            raise ConfigError("TEST.MODEL_SELECTION best_base_test needs TRAINER.PROTOCOL base2novel.")

    # --- data -----------------------------------------------------------------------------
    def build_data_loader(self):
        if dist_.is_distributed():
            check_sampler(self.cfg)
        with dist_.main_first():  # rank 0 writes the dataset caches (split JSON, few-shot pickles)
            self.build_loaders()
        if dist_.is_distributed():
            distribute_loaders(self)
        keep_workers(self)  # persistent workers (DATALOADER.NUM_WORKERS > 0)

    def build_train_sampler(self, data_source):
        """The training sampler under torchrun: this rank's share of a permutation that depends
        on (seed, epoch) only (`set_epoch` is called every epoch), the tail dropped so that every
        rank runs the same number of steps."""
        return torch.utils.data.DistributedSampler(
            data_source, num_replicas=dist_.world_size(), rank=dist_.rank(),
            shuffle=self.cfg.DATALOADER.TRAIN_X.SAMPLER == "RandomSampler",
            seed=dist_.shared_seed(self.cfg.SEED), drop_last=True)

    def build_loaders(self):
        # Dassl's SimpleTrainer.build_data_loader, with loaders that name unreadable images.
        dm = DataManager(self.cfg, custom_tfm_test=test_transform(self.cfg), dataset_wrapper=CheckedDatasetWrapper)
        self.dm = dm
        logger.info("Dataset %s: loader %s", self.cfg.DATASET.NAME, served_by(self.cfg.DATASET.NAME))
        if openai_clip.SHADOWED:  # under a host codebase whose clip/ folder shadows the installed package
            logger.info("%s", openai_clip.SHADOWED)
        self.train_loader_x = check_loader(dm.train_loader_x, "train")
        self.train_loader_u = check_loader(dm.train_loader_u, "train")
        self.val_loader = check_loader(dm.val_loader, "val")
        self.test_loader = check_loader(dm.test_loader, "test")
        self.num_classes, self.num_source_domains, self.lab2cname = dm.num_classes, dm.num_source_domains, dm.lab2cname
        self.unreadable = {}  # image path -> reason, for the end-of-epoch list (SKIP_UNREADABLE)
        self.unreadable_seen = 0  # unreadable images met by this process in the current pass
        if self.cfg.DATASET.SUBSAMPLE_CLASSES == "all":
            full = self.dm.dataset
            self.eval_loader = self.test_loader
        else:  # e.g. a teacher trained on base classes still reports base and novel
            cfg = self.cfg.clone()
            cfg.defrost()
            cfg.DATASET.SUBSAMPLE_CLASSES = "all"
            full = build_dataset(cfg)
            self.eval_loader = check_loader(build_data_loader(
                cfg, sampler_type=cfg.DATALOADER.TEST.SAMPLER, data_source=full.test,
                batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=test_transform(cfg),
                is_train=False, dataset_wrapper=CheckedDatasetWrapper), "test")
        self.all_classnames = list(full.classnames)
        self.num_base = num_base_classes(len(self.all_classnames))

    def screen_batch(self, batch: dict, split: str, min_size: int = 1):
        """The batch without its unreadable images, or None to skip it. An unreadable image
        stops the run with a message naming it, unless DATALOADER.SKIP_UNREADABLE."""
        bad = batch.pop(UNREADABLE, None) or []
        if bad and not self.cfg.DATALOADER.SKIP_UNREADABLE:
            raise unreadable_error(*bad[0], split, self.cfg)
        for path, reason in bad:
            self.unreadable[path] = reason
        self.unreadable_seen += len(bad)
        if "img" not in batch or (bad and len(batch["img"]) < min_size):  # only a batch skipping shrank
            return None
        return batch

    def check_unreadable_share(self, count: int, loader, split: str, so_far: bool):
        """Stop when more than DATALOADER.MAX_UNREADABLE_SHARE of the split's images were skipped.

        `count` is over every rank (`sum_over_ranks`), so all ranks decide alike and stop
        together (a rank that stopped alone would leave the others waiting in a collective)."""
        total = len(loader.dataset)
        if count <= self.cfg.DATALOADER.MAX_UNREADABLE_SHARE * total:
            return
        examples = sorted(self.unreadable.items())[:5]
        if dist_.is_distributed():  # every rank is here: the same count crossed the limit on all of them
            examples = sorted(e for part in dist_.all_gather_objects(examples) for e in part)[:5]
        raise too_many_unreadable(count, total, examples, split, self.cfg, so_far)

    def no_steps_error(self, loader, skipped: int, unreadable: int):
        """An epoch that made no optimisation step: why, and what to change."""
        n, batch = len(loader.dataset), loader.batch_size
        where = (f"epoch {self.epoch + 1}: the train split of {self.cfg.DATASET.NAME} ({n} images) gave no "
                 "optimisation step")
        per = " per process" if dist_.is_distributed() else ""
        if len(loader) == 0:
            why = (f"its loader has no batch: fewer images{per} than one batch of {batch} "
                   "(DATALOADER.TRAIN_X.BATCH_SIZE), and the incomplete last batch is dropped" if loader.drop_last
                   else "its loader has no batch")
            return ConfigError(f"{where}: {why}. Use a smaller DATALOADER.TRAIN_X.BATCH_SIZE or more training "
                               "images (DATASET.NUM_SHOTS, the dataset folder).")
        return DataError(
            f"{where}: all {skipped} batches were skipped, {unreadable} unreadable image(s) dropped "
            "(DATALOADER.SKIP_UNREADABLE True; a batch that this leaves with fewer than 2 images is dropped too). "
            f"Check the images with `promptkd check --root {self.cfg.DATASET.ROOT} {self.cfg.DATASET.NAME}`.")

    def report_unreadable(self, where: str):
        if self.unreadable:
            logger.warning("%s: skipped %d unreadable image(s) (DATALOADER.SKIP_UNREADABLE):\n%s", where,
                           len(self.unreadable), "\n".join(f"  {p}: {r}" for p, r in sorted(self.unreadable.items())))
            self.unreadable = {}

    def check_input(self, preprocess, what: str):
        """INPUT.* must be what the backbone's model wants (`promptkd.backbones.Preprocess`):
        Dassl builds the image transforms from them before the model is loaded."""
        i, want = self.cfg.INPUT, preprocess
        h, w = want.size
        fixes, problems = [], []
        if tuple(i.SIZE) != (h, w):
            problems.append(f"INPUT.SIZE is {list(i.SIZE)} but the {what} expects {h}x{w} images")
            fixes.append(f'INPUT.SIZE "({h}, {w})"')
        for key, have, model in (("PIXEL_MEAN", i.PIXEL_MEAN, want.mean), ("PIXEL_STD", i.PIXEL_STD, want.std)):
            if len(have) != len(model) or any(abs(a - b) > 1e-6 for a, b in zip(have, model)):
                problems.append(f"INPUT.{key} is {list(have)} but the {what} was trained with {list(model)}")
                fixes.append(f'INPUT.{key} "{list(model)}"')
        if i.INTERPOLATION != want.interpolation:
            problems.append(f"INPUT.INTERPOLATION is {i.INTERPOLATION} but the {what} uses {want.interpolation}")
            fixes.append(f"INPUT.INTERPOLATION {want.interpolation}")
        if want.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"The {what} fits test images with resize mode '{want.resize_mode}', which is not "
                              f"supported (only {', '.join(RESIZE_MODES)}).")
        if i.RESIZE_MODE != want.resize_mode:
            problems.append(f"INPUT.RESIZE_MODE is {i.RESIZE_MODE} but the {what} fits test images by "
                            f"'{want.resize_mode}'")
            fixes.append(f"INPUT.RESIZE_MODE {want.resize_mode}")
        if problems:
            raise ConfigError("; ".join(problems) + f". Set {' '.join(fixes)} (the {what}'s own preprocessing).")

    # --- precision --------------------------------------------------------------------------
    def setup_precision(self) -> str:
        """Resolve PREC for this device (promptkd.precision.Precision); returns the backbone mode,
        "fp32" or "fp16" weights."""
        self.precision = Precision.resolve(self.tcfg.PREC, self.device)
        self.prec, self.scaler = self.precision.prec, self.precision.scaler
        configure_matmul(self.device, self.cfg.TRAIN.DETERMINISTIC)  # TF32 on a GPU unless DETERMINISTIC
        return self.precision.backbone_mode

    def autocast(self):
        return self.precision.autocast()

    # --- optimisation -----------------------------------------------------------------------
    def register_trainable(self, model: torch.nn.Module):
        """Build optimiser + LR schedule for `model`'s trainable parameters and register it."""
        params = [p for p in model.parameters() if p.requires_grad]
        o = self.cfg.OPTIM
        lr = self.scaled_lr()
        if o.NAME == "sgd":
            optim = torch.optim.SGD(params, lr=lr, momentum=o.MOMENTUM, weight_decay=o.WEIGHT_DECAY,
                                    dampening=o.SGD_DAMPNING, nesterov=o.SGD_NESTEROV)
        elif o.NAME in ("adam", "adamw"):
            cls = torch.optim.Adam if o.NAME == "adam" else torch.optim.AdamW
            optim = cls(params, lr=lr, weight_decay=o.WEIGHT_DECAY, betas=(o.ADAM_BETA1, o.ADAM_BETA2))
        else:
            raise ConfigError(f"OPTIM.NAME '{o.NAME}' is not supported; use sgd, adam or adamw.")
        sched = build_lr_scheduler(optim, o.LR_SCHEDULER, o.MAX_EPOCH, max(o.WARMUP_EPOCH, 0),
                                   o.WARMUP_TYPE, o.WARMUP_CONS_LR, o.WARMUP_MIN_LR)
        self.optim, self.sched = optim, sched
        self.register_model(MODEL_NAME, model, optim, sched)
        n_train = sum(p.numel() for p in params)
        logger.info("Trainable parameters: %s (%s tensors)", f"{n_train:,}", len(params))
        if self.cfg.DISTRIBUTED.SYNC_BN and self.device.type != "cuda":
            raise ConfigError("DISTRIBUTED.SYNC_BN True needs GPUs (SyncBatchNorm only works on GPU "
                              f"modules) but this run is on {self.device.type}: set DISTRIBUTED.SYNC_BN False.")
        # The training forward goes through the DDP wrapper under torchrun; self.model (what
        # Dassl saves, evaluates and loads into) stays unwrapped: checkpoint keys carry no "module.".
        self.train_model = dist_.wrap(model, sync_bn=self.cfg.DISTRIBUTED.SYNC_BN)
        if self.cfg.TRAIN.COMPILE:  # the training forward through torch.compile (self.model stays eager)
            logger.info("TRAIN.COMPILE %s: the training forward is compiled (torch.compile, mode %s)",
                        self.cfg.TRAIN.COMPILE, self.cfg.TRAIN.COMPILE)
            self.train_model = torch.compile(self.train_model, mode=self.cfg.TRAIN.COMPILE)

    def scaled_lr(self) -> float:
        """OPTIM.LR, times the number of processes with DISTRIBUTED.SCALE_LR (linear scaling:
        the batch is per process, so the global batch grows with the processes)."""
        lr, world = self.cfg.OPTIM.LR, dist_.world_size()
        if world == 1:
            return lr
        batch = self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        if self.cfg.DISTRIBUTED.SCALE_LR:
            logger.info("LR %g = OPTIM.LR %g x %d processes (DISTRIBUTED.SCALE_LR True: linear scaling to the "
                        "global batch %d = %d per process x %d)", lr * world, lr, world, batch * world, batch, world)
            return lr * world
        logger.info("LR %g = OPTIM.LR, not scaled (global batch %d = %d per process x %d processes; "
                    "DISTRIBUTED.SCALE_LR True would use %g)", lr, batch * world, batch, world, lr * world)
        return lr

    @property
    def step_log(self) -> StepLog:
        """Per-step values on the device, read every TRAIN.READ_LOSS_EVERY steps (promptkd.losses)."""
        log = self.__dict__.get("_step_log")
        if log is None:
            log = self._step_log = StepLog(self.cfg.TRAIN.READ_LOSS_EVERY, self.cfg.TRAIN.MAX_SKIPPED_STEPS_SHARE)
        return log

    def backward_and_step(self, loss: torch.Tensor):
        """Backward and optimiser step, without a host sync of its own. Without a GradScaler the
        loss must be finite (checked when the step log is read); under one (PREC amp) a step whose
        gradients overflow is skipped by the scaler and counted (`StepLog.scaler_step`)."""
        where = f"epoch {self.epoch + 1}, batch {self.batch_idx + 1}"
        log = self.step_log
        log.hint = (f"Try a lower OPTIM.LR (now {self.get_current_lr():.2e}), check the loss weights, or PREC fp32 "
                    f"(now {self.prec}). The last good checkpoint is kept in {self.output_dir}.")
        self.optim.zero_grad(set_to_none=True)
        if self.scaler is not None:
            if log.last_scale is None:
                log.last_scale = self.scaler.get_scale()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)  # skips the step when a gradient is not finite (GradScaler reads that: a sync)
            self.scaler.update()
            log.scaler_step(self.scaler.get_scale(), where)
        else:
            log.watch(loss, where)
            loss.backward()
            self.optim.step()

    # --- the epoch loop ---------------------------------------------------------------------
    def run_epoch(self):
        self.set_model_mode("train")
        self.num_batches = len(self.train_loader_x)
        sampler = getattr(self.train_loader_x, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # a new shuffle each epoch under torchrun
            sampler.set_epoch(self.epoch)
        if self.num_batches == 0:
            raise self.no_steps_error(self.train_loader_x, 0, 0)
        skipping = self.cfg.DATALOADER.SKIP_UNREADABLE
        totals, steps, skipped, start, lr = {}, 0, 0, time.time(), self.get_current_lr()
        log = self.step_log
        self.unreadable_seen, unreadable = 0, 0
        bar = tqdm(self.train_loader_x, desc=f"epoch {self.epoch + 1}/{self.max_epoch}", leave=False,
                   dynamic_ncols=True, disable=None if dist_.is_main() else True)
        for self.batch_idx, batch in enumerate(bar):
            # BatchNorm in training needs two images: a batch that skipping shrank below that is dropped
            # (a configured batch of 1, e.g. CoCoOp's, is kept).
            batch = self.screen_batch(batch, "train", min_size=2)
            if skipping:  # counts over all ranks: they skip a step together (DDP steps in lockstep) and stop together
                drop, unreadable = dist_.sum_over_ranks(batch is None, self.unreadable_seen)
                self.check_unreadable_share(unreadable, self.train_loader_x, "train", so_far=True)
            else:
                drop = batch is None
            if drop:
                skipped += 1
                continue
            summary = self.forward_backward(batch)  # loss terms: device tensors (or numbers)
            steps += 1
            log.add(self.epoch * self.num_batches + self.batch_idx, summary)
            if log.due():
                self.log_steps(log, totals, bar)
        self.log_steps(log, totals, bar)
        if steps == 0:  # the same on every rank (they step in lockstep)
            raise self.no_steps_error(self.train_loader_x, skipped, unreadable)
        dist_.sync_buffers(self.model)  # rank 0's BatchNorm statistics on every rank, as DDP would use next
        self.update_lr()  # the schedule is per epoch
        self.report_unreadable(f"epoch {self.epoch + 1}")
        means = {k: v / steps for k, v in totals.items()}
        self.epoch_losses = means
        self.track({"lr": lr, **{f"train/epoch_{k}": v for k, v in means.items()}}, epoch=self.epoch + 1)
        logger.info("epoch [%d/%d] %s lr %.4e time %.1fs", self.epoch + 1, self.max_epoch,
                    " ".join(f"{k} {v:.4f}" for k, v in means.items()), lr, time.time() - start)

    def log_steps(self, log: StepLog, totals: dict, bar) -> None:
        """Read the steps' values from the device (one host sync; raises on a non-finite loss)
        and log each step as it was: epoch totals, progress bar, TensorBoard, W&B."""
        steps = log.read()
        for n_iter, summary in steps:
            for k, v in summary.items():
                totals[k] = totals.get(k, 0.0) + v
                self.write_scalar(f"train/{k}", v, n_iter)
            self.track({f"train/{k}": v for k, v in summary.items()}, iteration=n_iter, epoch=self.epoch + 1)
        if steps:
            bar.set_postfix({k: f"{v:.4f}" for k, v in steps[-1][1].items()})

    def before_train(self):
        self.training_started = True
        self.time_start = time.time()
        self.best_result = -math.inf
        directory = self.cfg.RESUME or self.output_dir
        self.start_epoch = self.resume_model_if_exist(directory)
        if dist_.is_main():  # one TensorBoard writer (write_scalar is a no-op without one)
            self.init_writer(os.path.join(self.output_dir, "tensorboard"))
        self.tracker = Tracker.start(self, resumed=self.start_epoch > 0)  # LOG.WANDB (rank 0), else None
        logger.info("Model selection: %s", self.selection_description())

    def selection_description(self) -> str:
        if self.cfg.TEST.MODEL_SELECTION == "best_base_test":
            return ("best_base_test: the epoch with the best accuracy on the base-class TEST images "
                    "(the published code's rule; it selects on test data)")
        return "last_epoch: the final model is reported (no choice is made on test data)"

    def after_epoch(self):
        result = None
        if self.cfg.TEST.MODEL_SELECTION == "best_base_test":
            result = self.test(split="base-selection")
            if result > self.best_result:
                self.best_result = result
                self.save_model(self.epoch, self.output_dir, val_result=result, model_name="model-best.pth.tar")
        self.save_model(self.epoch, self.output_dir, val_result=result)

    def after_train(self):
        if self.cfg.TEST.MODEL_SELECTION == "best_base_test" and self.max_epoch > 0:
            self.load_model(self.output_dir, best=True)
        self.finalize_model()
        if not self.cfg.TEST.NO_TEST:
            self.test()
        elapsed = datetime.timedelta(seconds=round(time.time() - self.time_start))
        logger.info("Elapsed: %s", elapsed)
        self.close_writer()
        self.finish_tracking()

    def track(self, metrics: dict, **axes):
        """Log to the W&B run, if there is one (LOG.WANDB)."""
        if self.tracker is not None:
            self.tracker.log(metrics, **axes)

    def finish_tracking(self):
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None

    def finalize_model(self, eval_only: bool = False):
        """Hook run once the model is final (after training, or after loading for --eval-only)."""

    @property
    def trains_nothing(self) -> bool:
        """True for a method with nothing to learn (zero-shot): --eval-only needs no checkpoint."""
        return False

    def load_model(self, directory, epoch=None, best=False):
        """Dassl's entry for evaluation. A host's train.py calls it for --eval-only, then `test()`:
        that first call does what our --eval-only does before evaluating (load, or a method
        that trains nothing as built; the export; run.json's eval_only)."""
        if self.host_run and not self.training_started and not self.host_eval_only:
            self.host_eval_only = True
            self.run_record = records.update_run(self.cfg, self.run_record, eval_only=True)
            self.run_eval_only(directory, epoch=epoch, test=False)
            return
        super().load_model(directory, epoch=epoch, best=best)

    def run_eval_only(self, model_dir: str, epoch=None, test: bool = True):
        """`--eval-only`: load a saved model, finalise it (e.g. export) and evaluate it. Without
        --model-dir only a method that trains nothing is evaluated (as built)."""
        if model_dir:
            self.load_model(model_dir, epoch=epoch)
        elif self.trains_nothing:
            logger.info("--eval-only without --model-dir: %s trains nothing here, so it is evaluated as built.",
                        self.cfg.TRAINER.NAME)
        else:
            raise ConfigError(
                f"--eval-only needs --model-dir: {self.cfg.TRAINER.NAME} learns its weights, and without a checkpoint "
                "it would evaluate an untrained model. Give --model-dir RUN_DIR (the --output-dir of a training run, "
                f"holding {MODEL_NAME}/model.pth.tar-N or model-best.pth.tar; --load-epoch N picks an epoch), or drop "
                "--eval-only to train.")
        self.tracker = Tracker.start(self, resumed=False, job_type="eval")
        self.finalize_model(eval_only=True)
        if test and not self.cfg.TEST.NO_TEST:
            self.test()
        if test:
            self.finish_tracking()



def check_allowed(key, value, allowed):
    """A ConfigError naming `key`, its value and the allowed values, unless `value` is one."""
    if value not in allowed:
        raise ConfigError(f"{key} is '{value}'; allowed values: {', '.join(allowed)}.")
