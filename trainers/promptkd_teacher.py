"""PromptKDTeacher (stage 1): a PromptSRC-style IVLP teacher that exports its class vectors.

Trains independent vision-language deep prompts on a CLIP (the paper: ViT-L/14, 16-shot base
classes) with cross-entropy plus PromptSRC's regularisers (L1 to frozen template-ensemble text
features, L1 to frozen image features, KL to frozen-CLIP logits; a zero weight switches a term
off, all zero = plain IVLP) and Gaussian prompt aggregation over epochs. When the teacher is
final it encodes *all* classes once and writes `class_vectors_<Dataset>.pt` and
`image_side.pt` to its export folder, which is all stage 2 needs. `--eval-only` exports from a
finished run or from a published PromptSRC/PromptKD teacher checkpoint. ZERO_SHOT (or
OPTIM.MAX_EPOCH 0) gives the untrained "a photo of a {c}." CLIP teacher.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY

from promptkd.backbones import clip, load_clip
from promptkd.class_vectors import IMAGE_SIDE_FILE, class_vectors_file
from promptkd.losses import GaussianPromptAggregator, promptsrc_loss
from promptkd.teacher import IVLPTeacher, load_published_teacher
from trainers.base import MODEL_NAME, PromptTrainer

logger = logging.getLogger("promptkd")


@TRAINER_REGISTRY.register()
class PromptKDTeacher(PromptTrainer):
    CFG_NODE = "PROMPTSRC"

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        t = cfg.TRAINER.PROMPTSRC
        for key in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "KL_LOSS_WEIGHT"):
            if t[key] < 0:
                raise ValueError(f"TRAINER.PROMPTSRC.{key} must be >= 0, got {t[key]}.")
        if t.GPA and t.GPA_STD <= 0:
            raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD must be > 0, got {t.GPA_STD}.")
        if (t.ZERO_SHOT or cfg.OPTIM.MAX_EPOCH == 0) and (t.PROMPT_DEPTH_TEXT or t.PROMPT_DEPTH_VISION):
            raise ValueError("A zero-shot teacher (TRAINER.PROMPTSRC.ZERO_SHOT or OPTIM.MAX_EPOCH 0) has no "
                             "prompts: set TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT 0 and PROMPT_DEPTH_VISION 0 "
                             "(configs/trainers/PromptKDTeacher/zeroshot_vit_l14.yaml).")

    def build_model(self):
        cfg, t = self.cfg, self.tcfg
        backbone_mode = self.setup_precision()
        self.zero_shot = t.ZERO_SHOT or cfg.OPTIM.MAX_EPOCH == 0
        self.regularise = not self.zero_shot and any(
            t[k] > 0 for k in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "KL_LOSS_WEIGHT"))
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.WEIGHTS_DIR)
        self.check_input_size(clip_model.visual, "teacher")
        self.backbone_ref = _backbone_ref(cfg.MODEL.BACKBONE.NAME)
        self.model = IVLPTeacher(clip_model, self.dm.dataset.classnames, t.N_CTX_TEXT, t.PROMPT_DEPTH_TEXT,
                                 t.CTX_INIT, t.N_CTX_VISION, t.PROMPT_DEPTH_VISION, regularise=self.regularise)
        if backbone_mode == "fp16":
            clip.model.convert_weights(self.model.clip)
        self.model.to(self.device)
        self.gpa, self.gpa_applied = None, False
        if self.zero_shot:
            self.max_epoch = 0
            self.optim = self.sched = None
            self.register_model(MODEL_NAME, self.model, None, None)
            logger.info("Zero-shot teacher: %s with '%s {class}.'; nothing is trained.",
                        cfg.MODEL.BACKBONE.NAME, t.CTX_INIT)
            return
        self.register_trainable(self.model)
        if t.GPA and cfg.TEST.MODEL_SELECTION == "last_epoch":
            self.gpa = GaussianPromptAggregator(self.max_epoch, t.GPA_MEAN, t.GPA_STD)

    def prompt_params(self) -> dict:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def forward_backward(self, batch):
        images, labels = batch["img"].to(self.device), batch["label"].to(self.device)
        t = self.tcfg
        with self.autocast():
            out = self.model(images)
        if self.regularise:
            terms = promptsrc_loss(out["logits"], labels, out["text_feats"], out["zs_text_feats"],
                                   out["image_feats"], out["zs_image_feats"], out["zs_logits"],
                                   t.TEXT_LOSS_WEIGHT, t.IMAGE_LOSS_WEIGHT, t.KL_LOSS_WEIGHT)
        else:
            terms = {"loss": F.cross_entropy(out["logits"].float(), labels)}
        self.backward_and_step(terms["loss"])
        return {k: v.item() for k, v in terms.items()}

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
        self.export()

    def export(self):
        folder = self.tcfg.EXPORT_DIR or os.path.join(self.output_dir, "export")
        vectors, side = self.model.export(self.all_classnames, self.cfg.DATASET.NAME, self.backbone_ref)
        vectors_path = class_vectors_file(folder, self.cfg.DATASET.NAME)
        vectors.save(vectors_path)
        side.save(os.path.join(folder, IMAGE_SIDE_FILE))
        logger.info("Exported class vectors of %d classes (dim %d) to %s and the image side to %s",
                    *vectors.vectors.shape, vectors_path, os.path.join(folder, IMAGE_SIDE_FILE))

    @torch.no_grad()
    def test(self, split=None):
        self.set_model_mode("eval")
        self.eval_vectors = self.model.class_vectors(self.all_classnames)  # once per evaluation
        return super().test(split)

    def model_inference(self, images):
        feats = F.normalize(self.model.image_encoder(images).float(), dim=-1)
        return self.model.logit_scale * feats @ self.eval_vectors.t()

    def load_published(self, path: str):
        load_published_teacher(self.model, path, self.cfg.MODEL.TRUST_PICKLED_CHECKPOINTS)
        self.backbone_ref = {"kind": "published", "path": os.path.abspath(path)}
        logger.info("Loaded published teacher %s (backbone weights from the checkpoint)", path)


def _backbone_ref(name: str) -> dict:
    if name in clip.available_models():
        return {"kind": "clip", "name": name}
    return {"kind": "clip", "name": os.path.abspath(os.path.expanduser(name))}
