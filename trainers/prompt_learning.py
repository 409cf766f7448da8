"""Shared trainer for every prompt-learning method (`promptkd.prompt_method.PromptMethod`).

Trains the method's prompts with cross-entropy on the labelled (few-shot) training classes
plus the method's own regularisers, optionally aggregates prompts over epochs (GPA), reports
base / novel / HM over all classes from one run, and, once the model is final, exports the
class vectors of *all* classes and the image side, so any method here can be a PromptKD
teacher. A method trainer only says which config node it reads and how to build its method.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.nn.functional as F

from promptkd import distributed as dist_
from promptkd.backbones import backbone_reference, load_backbone
from promptkd.class_vectors import (IMAGE_SIDE_FILE, class_vectors_file, read_vocabulary, vocabulary_dataset,
                                    vocabulary_vectors_file)
from promptkd.errors import ConfigError
from promptkd.losses import GaussianPromptAggregator
from promptkd.precision import fp32_scoring
from promptkd.deploy.predictor import PredictorRecord
from promptkd.trainers.base import MODEL_NAME, PromptTrainer
from promptkd.trainers.config import grad_checkpoint_towers
from promptkd.trainers.predictor_export import preprocess_from_cfg, save_predictor

logger = logging.getLogger("promptkd")


class MethodExport:
    """Export of a trained `PromptMethod` (class vectors of all classes, image side, predictor),
    shared by the prompt-learning trainers and PromptKD's method students."""

    def export(self):
        if self.model.image_conditioned:
            logger.info("%s has no class vectors (its text depends on the image): nothing exported.",
                        type(self.model).__name__)
            return
        folder = self.cfg.TRAINER.EXPORT_DIR or os.path.join(self.output_dir, "export")
        with self.fp32_backbone():  # computed once and stored in fp32, whatever PREC trained in
            vectors, side = self.model.export(self.all_classnames, self.cfg.DATASET.NAME, self.backbone_ref,
                                              method=self.cfg.TRAINER.NAME)
        vectors.teacher.update(precision="fp32", train_precision=self.prec)
        vectors_path = class_vectors_file(folder, self.cfg.DATASET.NAME)
        vectors.save(vectors_path)
        side.save(os.path.join(folder, IMAGE_SIDE_FILE))
        save_predictor(self.cfg, PredictorRecord.for_image_side(vectors, side, preprocess_from_cfg(self.cfg),
                                                                self.cfg.MODEL.WEIGHTS_DIR))
        logger.info("Exported class vectors of %d classes (dim %d) to %s and the image side to %s",
                    *vectors.vectors.shape, vectors_path, os.path.join(folder, IMAGE_SIDE_FILE))
        if self.cfg.TRAINER.EXPORT_VOCABULARY:
            self.export_vocabulary(self.cfg.TRAINER.EXPORT_VOCABULARY, folder)

    def export_vocabulary(self, names_file: str, folder: str) -> str:
        """The class vectors of a vocabulary (a text file, one class name per line), for
        class-agnostic distillation (TRAINER.PROMPTKD.VOCABULARY)."""
        names = read_vocabulary(names_file)
        with self.fp32_backbone():
            vectors, _ = self.model.export(names, vocabulary_dataset(names_file), self.backbone_ref,
                                           method=self.cfg.TRAINER.NAME)
        vectors.teacher.update(precision="fp32", train_precision=self.prec)
        path = vocabulary_vectors_file(folder, names_file)
        vectors.save(path)
        logger.info("Exported the class vectors of the vocabulary %s (%d names) to %s", names_file, len(names), path)
        return path

    @contextlib.contextmanager
    def fp32_backbone(self):
        """Under PREC fp16 / amp / bf16, the frozen backbone with its fp32 weights for the duration
        (re-read from its file or published checkpoint, not up-cast), then cast down again."""
        if self.precision.frozen_dtype == torch.float32:
            yield
            return
        model = self.model.clip.float()
        model.load_state_dict(load_backbone(self.cfg.MODEL.BACKBONE.NAME, self.cfg.MODEL.WEIGHTS_DIR)[0].state_dict())
        if self.backbone_ref["kind"] == "published":  # its backbone weights on top of the stock ones
            self.load_published(self.backbone_ref["path"])
        try:
            yield
        finally:
            self.precision.cast_frozen(model)  # fp16, or autocast's dtype under amp / bf16


class PromptLearningTrainer(MethodExport, PromptTrainer):
    def build_method(self, clip_model, classnames):
        """Return the `PromptMethod` for these (training) classes from `self.tcfg`."""
        raise NotImplementedError

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = cfg.TRAINER[self.CFG_NODE]
        if node.get("GPA", False) and node.GPA_STD <= 0:
            raise ConfigError(f"TRAINER.{self.CFG_NODE}.GPA_STD must be > 0, got {node.GPA_STD}.")

    def build_model(self):
        cfg, node = self.cfg, self.tcfg
        backbone_mode = self.backbone_mode = self.setup_precision()
        clip_model, preprocess = load_backbone(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.WEIGHTS_DIR)
        self.check_input(preprocess, f"backbone {cfg.MODEL.BACKBONE.NAME}")
        self.backbone_ref = backbone_reference(cfg.MODEL.BACKBONE.NAME)
        self.model = self.build_method(clip_model, self.dm.dataset.classnames)
        self.precision.cast_frozen(self.model.clip)  # fp16; amp / bf16: autocast's compute dtype
        self.model.to(self.device)
        self.gpa, self.gpa_applied = None, False
        trainable = any(p.requires_grad for p in self.model.parameters())
        self.zero_shot = node.get("ZERO_SHOT", False) or cfg.OPTIM.MAX_EPOCH == 0 or not trainable
        if self.zero_shot:
            self.max_epoch = 0
            self.optim = self.sched = None
            self.register_model(MODEL_NAME, self.model, None, None)
            logger.info("%s on %s: nothing is trained.", type(self.model).__name__, cfg.MODEL.BACKBONE.NAME)
            return
        self.register_trainable(self.model)
        self.apply_grad_checkpoint()
        if node.get("GPA", False) and cfg.TEST.MODEL_SELECTION == "last_epoch":
            self.gpa = GaussianPromptAggregator(self.max_epoch, node.GPA_MEAN, node.GPA_STD)

    @property
    def trains_nothing(self) -> bool:
        """Zero-shot (nothing trainable, ZERO_SHOT, or OPTIM.MAX_EPOCH 0): --eval-only needs no checkpoint."""
        return self.zero_shot

    def apply_grad_checkpoint(self):
        """TRAINER.<NODE>.GRAD_CHECKPOINT -> activation checkpointing in the method's towers."""
        mode = self.tcfg.get("GRAD_CHECKPOINT", "off")
        text, image = grad_checkpoint_towers(mode)
        on = self.model.set_grad_checkpoint(text, image)
        key, name = f"TRAINER.{self.CFG_NODE}.GRAD_CHECKPOINT {mode}", type(self.model).__name__
        logger.info("Activation checkpointing (%s): text tower %s, image tower %s", key,
                    *("on" if on[t] else "off" for t in ("text", "image")))
        missed = [t for t, asked in (("text", text), ("image", image)) if asked and not on[t]]
        if missed:
            logger.warning("%s: %s does not backpropagate through a prompted %s tower (no prompts there), so "
                           "there is nothing to checkpoint.", key, name, " or ".join(missed))

    def prompt_params(self) -> dict:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def forward_backward(self, batch):
        images = batch["img"].to(self.device, non_blocking=True)  # pinned by the loader on a GPU
        labels = batch["label"].to(self.device, non_blocking=True)
        with self.autocast():
            out = self.train_model(images)  # the DDP wrapper under torchrun
        with fp32_scoring(self.device.type):  # the loss in fp32 (promptkd.precision)
            terms = {"ce": F.cross_entropy(out["logits"].float(), labels), **self.model.extra_losses(out, labels)}
        loss = sum(terms.values())
        self.backward_and_step(loss)
        summary = {k: v.detach() for k, v in terms.items()}  # read by the loop every N steps (no sync here)
        if len(terms) > 1:
            summary["loss"] = loss.detach()
        return summary

    def after_epoch(self):
        if self.gpa is not None:
            self.gpa.update(self.epoch + 1, self.prompt_params())
        super().after_epoch()

    def extra_state(self):
        return {"gpa": self.gpa.state_dict() if self.gpa else None, "gpa_applied": self.gpa_applied}

    def load_extra_state(self, state):
        if self.gpa is not None and state.get("gpa"):
            self.gpa.load_state_dict(state["gpa"])
        self.gpa_applied = bool(state.get("gpa_applied", False))

    def finalize_model(self, eval_only: bool = False):
        """Put the final prompts in place (GPA) and export the class vectors, once."""
        if not eval_only and self.gpa is not None and not self.gpa_applied and self.max_epoch > 0:
            with torch.no_grad():
                for name, value in self.gpa.result().items():
                    self.prompt_params()[name].copy_(value)
            self.gpa_applied = True
            self.save_model(self.max_epoch - 1, self.output_dir)  # the final checkpoint holds the aggregate
            logger.info("Gaussian prompt aggregation applied (mean %.1f, std %.1f over %d epochs)",
                        self.tcfg.GPA_MEAN, self.tcfg.GPA_STD, self.max_epoch)
        if dist_.is_main():  # one export; the others wait until it is written
            self.export()
        dist_.barrier()

    @torch.no_grad()
    def test(self, split=None):
        self.set_model_mode("eval")
        self.model.prepare_eval(self.all_classnames)  # class vectors once per evaluation
        return super().test(split)

    def model_inference(self, images):
        return self.model.eval_logits(images)

