"""PromptKDTeacher (stage 1): a PromptSRC-style IVLP teacher that exports its class vectors.

Trains independent vision-language deep prompts on a CLIP (the paper: ViT-L/14, 16-shot base
classes) with cross-entropy plus PromptSRC's regularisers (L1 to frozen template-ensemble text
features, L1 to frozen image features, KL to frozen-CLIP logits; a zero weight switches a term
off, all zero = plain IVLP) and Gaussian prompt aggregation over epochs. When the teacher is
final it encodes *all* classes once and writes `class_vectors_<Dataset>.pt` and
`image_side.pt` to its export folder, which is all stage 2 needs. `--eval-only` exports from a
finished run or from a published PromptSRC/PromptKD teacher checkpoint. ZERO_SHOT (or
OPTIM.MAX_EPOCH 0) gives the untrained "a photo of a {c}." CLIP teacher; with
ZERO_SHOT_TEMPLATES its class vectors are CLIP's zero-shot ensemble over a template set
(scripts/promptkd/zeroshot_teacher.sh).
"""
from __future__ import annotations

import logging
import os


from promptkd.baselines import ZeroshotCLIP
from promptkd.teacher import IVLPTeacher, load_published_teacher
from promptkd.templates import TEMPLATE_SETS, template_set
from promptkd.trainers.prompt_learning import PromptLearningTrainer
from promptkd.errors import ConfigError

logger = logging.getLogger("promptkd")


class PromptKDTeacher(PromptLearningTrainer):
    CFG_NODE = "PROMPTSRC"
    PHRASE_MAY_EXCEED = False  # a CTX_INIT longer than N_CTX_TEXT is an error

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        t = cfg.TRAINER[self.CFG_NODE]
        for key in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "KL_LOSS_WEIGHT"):
            if t.get(key, 0) < 0:
                raise ConfigError(f"TRAINER.{self.CFG_NODE}.{key} must be >= 0, got {t[key]}.")
        if (t.get("ZERO_SHOT", False) or cfg.OPTIM.MAX_EPOCH == 0) and (t.PROMPT_DEPTH_TEXT or t.PROMPT_DEPTH_VISION):
            raise ConfigError(f"A zero-shot teacher (TRAINER.{self.CFG_NODE}.ZERO_SHOT or OPTIM.MAX_EPOCH 0) has "
                              f"no prompts: set TRAINER.{self.CFG_NODE}.PROMPT_DEPTH_TEXT 0 and PROMPT_DEPTH_VISION "
                              "0 (configs/trainers/PromptKDTeacher/zeroshot_vit_l14.yaml).")
        if t.get("ZERO_SHOT_TEMPLATES", "") and not (t.get("ZERO_SHOT", False) or cfg.OPTIM.MAX_EPOCH == 0):
            raise ConfigError(f"TRAINER.{self.CFG_NODE}.ZERO_SHOT_TEMPLATES '{t.ZERO_SHOT_TEMPLATES}' sets the "
                              f"templates of a zero-shot teacher: set TRAINER.{self.CFG_NODE}.ZERO_SHOT True (and "
                              "prompt depths 0), or ZERO_SHOT_TEMPLATES \"\" for a trained one.")
        if t.get("ZERO_SHOT_TEMPLATES", ""):
            template_set(t.ZERO_SHOT_TEMPLATES, f"TRAINER.{self.CFG_NODE}.ZERO_SHOT_TEMPLATES")  # fails early

    def build_method(self, clip_model, classnames):
        t = self.tcfg
        if t.get("ZERO_SHOT_TEMPLATES", ""):  # CLIP's zero-shot ensemble over a chosen template set
            spec = t.ZERO_SHOT_TEMPLATES
            templates = template_set(spec, f"TRAINER.{self.CFG_NODE}.ZERO_SHOT_TEMPLATES")
            name = spec if spec in TEMPLATE_SETS else os.path.abspath(os.path.expanduser(spec))
            logger.info("Zero-shot teacher: class vectors averaged over %d templates (%s)", len(templates), name)
            return ZeroshotCLIP(clip_model, classnames, templates=templates, template_set=name)
        return self.build_ivlp(clip_model, classnames)

    def build_ivlp(self, clip_model, classnames):
        t = self.tcfg
        weights = [t.get(k, 0.0) for k in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "KL_LOSS_WEIGHT")]
        trains = not (t.get("ZERO_SHOT", False) or self.cfg.OPTIM.MAX_EPOCH == 0)
        return IVLPTeacher(clip_model, classnames, t.N_CTX_TEXT, t.PROMPT_DEPTH_TEXT, t.CTX_INIT, t.N_CTX_VISION,
                           t.PROMPT_DEPTH_VISION, regularise=trains and any(w > 0 for w in weights),
                           text_weight=weights[0], image_weight=weights[1], kl_weight=weights[2],
                           phrase_may_exceed=self.PHRASE_MAY_EXCEED)

    def load_published(self, path: str):
        load_published_teacher(self.model, path, self.cfg.MODEL.TRUST_PICKLED_CHECKPOINTS)
        self.backbone_ref = {"kind": "published", "path": os.path.abspath(path)}
        logger.info("Loaded published teacher %s (backbone weights from the checkpoint)", path)
