"""The stage-1 teacher: a CLIP with IVLP prompts trained PromptSRC-style (also IVLP and
PromptSRC as baselines), and the reader of published PromptSRC/PromptKD teachers.

`IVLPTeacher` scores images against the prompted text features of the training classes and
also returns what PromptSRC's regularisers compare with: the frozen CLIP's image features
(the same backbone without prompts, so no second copy is kept) and frozen template-ensemble
text features. `export()` (from `PromptMethod`) encodes every class once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import tokenizer
from .encoders import PromptedImageEncoder, PromptedTextEncoder
from .errors import CheckpointError, ConfigError
from .losses import promptsrc_regularisers
from .precision import class_logits, normalise
from .prompt_method import ENCODE_CHUNK, PromptMethod
from .templates import PROMPTSRC_TEMPLATES


@torch.no_grad()
def ensemble_text_features(clip_model: nn.Module, classnames: list[str], templates=PROMPTSRC_TEMPLATES,
                           chunk: int = ENCODE_CHUNK, normalise_each: bool = False) -> torch.Tensor:
    """Frozen CLIP text features averaged over templates, then normalised.

    The default templates are PromptSRC's 60 (its text regulariser). PromptSRC averages the
    unnormalised features; `normalise_each` averages unit vectors instead (CLIP's zero-shot
    ensemble). The (class, template) sentences are tokenized and encoded `chunk` at a time,
    without autograd, so memory does not grow with the number of classes or templates."""
    templates = list(templates)
    if chunk < 1 or not templates:
        raise ValueError(f"Need chunk >= 1 and at least one template, got chunk {chunk}, {len(templates)} templates.")
    device = clip_model.logit_scale.device
    tokenize = tokenizer(clip_model)
    n_templates, total = len(templates), len(classnames) * len(templates)
    sums = None
    for start in range(0, total, chunk):
        rows = range(start, min(start + chunk, total))  # row r: class r // T, template r % T
        texts = [templates[r % n_templates].format(classnames[r // n_templates].replace("_", " ")) for r in rows]
        feats = clip_model.encode_text(tokenize(texts).to(device)).float()
        feats = F.normalize(feats, dim=-1) if normalise_each else feats
        if sums is None:
            sums = feats.new_zeros(len(classnames), feats.shape[1])
        sums.index_add_(0, torch.tensor([r // n_templates for r in rows], device=device), feats)
    return F.normalize(sums / n_templates, dim=-1)


class IVLPTeacher(PromptMethod):
    """IVLP deep prompts on both towers; with `regularise`, PromptSRC's regularisers."""

    def __init__(self, clip_model: nn.Module, classnames: list[str], n_ctx_text: int = 4, depth_text: int = 9,
                 ctx_init: str = "a photo of a", n_ctx_vision: int = 4, depth_vision: int = 9,
                 regularise: bool = True, text_weight: float = 25.0, image_weight: float = 10.0,
                 kl_weight: float = 1.0, phrase_may_exceed: bool = False):
        super().__init__(clip_model, classnames)
        self.image_encoder = PromptedImageEncoder(clip_model, n_ctx_vision, depth_vision)
        self.text_encoder = PromptedTextEncoder(clip_model, n_ctx_text, depth_text, ctx_init,
                                                phrase_may_exceed=phrase_may_exceed)
        self.regularise = regularise
        self.weights = (text_weight, image_weight, kl_weight)
        self.zs_text = None  # frozen template-ensemble features, built at the first training step
        self.settings = {"n_ctx_text": n_ctx_text, "depth_text": depth_text, "ctx_init": ctx_init,
                         "n_ctx_vision": n_ctx_vision, "depth_vision": depth_vision}

    def image_features(self, images):
        return self.image_encoder(images)

    def text_features(self, classnames):
        return self.text_encoder(self.tokens(classnames, self.text_encoder.tokenize))

    def image_prompts(self):
        return list(self.image_encoder.prompts)

    def forward(self, images: torch.Tensor) -> dict:
        out = super().forward(images)
        if self.regularise and self.training:
            device = out["logits"].device
            if self.zs_text is None or self.zs_text.device != device:
                self.zs_text = ensemble_text_features(self.clip, self.classnames).to(device)
            with torch.no_grad():
                zs_image = normalise(self.clip.encode_image(images))
            out.update(zs_image_feats=zs_image, zs_text_feats=self.zs_text,
                       zs_logits=class_logits(zs_image, self.zs_text, self.logit_scale))
        return out

    def extra_losses(self, out: dict, labels: torch.Tensor) -> dict:
        if not (self.regularise and "zs_logits" in out):
            return {}
        return promptsrc_regularisers(out["text_feats"], out["zs_text_feats"], out["image_feats"],
                                      out["zs_image_feats"], out["logits"], out["zs_logits"], *self.weights)


def load_published_teacher(model: IVLPTeacher, path: str, trusted: bool = False) -> None:
    """Load a published PromptSRC/PromptKD teacher (key layout: docs/running.md) into `model` in place.

    The checkpoint's backbone weights replace the stock ones (its token-embedding table is
    not stored, so the stock table stays); prompt depths and n_ctx must match `model`.
    """
    from .checkpoints import split_published_teacher

    pub = split_published_teacher(path, trusted)
    for side, prompts, enc, key in (("text", pub["text_prompts"], model.text_encoder, "TEXT"),
                                    ("vision", pub["image_prompts"], model.image_encoder, "VISION")):
        if len(prompts) != enc.depth or (prompts and prompts[0].shape[0] != enc.n_ctx):
            n = prompts[0].shape[0] if prompts else 0
            raise ConfigError(f"{path} has {side} prompts of depth {len(prompts)} with {n} tokens; set "
                              f"PROMPT_DEPTH_{key} {len(prompts)} and N_CTX_{key} {n} to load it.")
    own = model.clip.state_dict()
    unknown = sorted(k for k in pub["clip_state"] if k not in own)
    if unknown:
        raise CheckpointError(f"{path}: backbone keys not in the CLIP model {unknown[:10]}; is MODEL.BACKBONE.NAME "
                              "the backbone this teacher was trained on?")
    bad = [k for k, v in pub["clip_state"].items() if v.shape != own[k].shape]
    if bad:
        raise ConfigError(f"{path}: backbone shapes differ from MODEL.BACKBONE.NAME for {bad[:5]}; use the "
                          "backbone this teacher was trained on (ViT-L/14 for the paper's teacher).")
    with torch.no_grad():
        model.clip.load_state_dict({**own, **pub["clip_state"]})
        for p, value in zip(list(model.text_encoder.prompts) + list(model.image_encoder.prompts),
                            pub["text_prompts"] + pub["image_prompts"]):
            p.copy_(value)
