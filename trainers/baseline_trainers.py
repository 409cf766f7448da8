"""The baselines of PromptKD's comparison table, through the same train.py, data pipeline and
evaluation: ZeroshotCLIP, CoOp, CoCoOp, IVLP, MaPLe and PromptSRC (registered in Dassl's
TRAINER_REGISTRY under these names). Each only builds its `promptkd.baselines` method from
its config node; training, evaluation and class-vector export are `PromptLearningTrainer`'s.
"""

from promptkd.baselines import CoCoOp as CoCoOpMethod
from promptkd.baselines import CoOp as CoOpMethod
from promptkd.baselines import MaPLe as MaPLeMethod
from promptkd.baselines import ZeroshotCLIP as ZeroshotCLIPMethod
from promptkd.teacher import IVLPTeacher
from promptkd.trainers.prompt_learning import PromptLearningTrainer
from promptkd.trainers.promptkd_teacher import PromptKDTeacher


class ZeroshotCLIP(PromptLearningTrainer):
    CFG_NODE = "ZEROSHOT"

    def build_method(self, clip_model, classnames):
        return ZeroshotCLIPMethod(clip_model, classnames, self.tcfg.TEMPLATE, self.tcfg.ENSEMBLE)


class CoOp(PromptLearningTrainer):
    CFG_NODE = "COOP"

    def build_method(self, clip_model, classnames):
        c = self.tcfg
        return CoOpMethod(clip_model, classnames, c.N_CTX, c.CTX_INIT, c.CSC, c.CLASS_TOKEN_POSITION)


class CoCoOp(PromptLearningTrainer):
    CFG_NODE = "COCOOP"

    def build_method(self, clip_model, classnames):
        return CoCoOpMethod(clip_model, classnames, self.tcfg.N_CTX, self.tcfg.CTX_INIT)


class IVLP(PromptLearningTrainer):
    """Independent vision-language deep prompts, cross-entropy only (MaPLe's IVLP baseline)."""

    CFG_NODE = "IVLP"

    def build_method(self, clip_model, classnames):
        c = self.tcfg
        return IVLPTeacher(clip_model, classnames, c.N_CTX_TEXT, c.PROMPT_DEPTH_TEXT, c.CTX_INIT, c.N_CTX_VISION,
                           c.PROMPT_DEPTH_VISION, regularise=False, phrase_may_exceed=True)


class MaPLe(PromptLearningTrainer):
    CFG_NODE = "MAPLE"

    def build_method(self, clip_model, classnames):
        c = self.tcfg
        return MaPLeMethod(clip_model, classnames, c.N_CTX, c.PROMPT_DEPTH, c.CTX_INIT)


class PromptSRC(PromptKDTeacher):
    """PromptSRC itself (the PromptKD teacher's method) with its ViT-B/16 configs."""
    PHRASE_MAY_EXCEED = True
