"""The prompt-learning baselines of PromptKD's comparison, on the shared encoders.

Each is a `PromptMethod` (promptkd/prompt_method.py) over one frozen stock CLIP:

    ZeroshotCLIP  "a photo of a {c}." or OpenAI's 80-template ensemble; nothing learnt
    CoOp          learnable text context, unified or class-specific, class token end/middle/front
    CoCoOp        CoOp context shifted per image by a meta-network (text depends on the image)
    MaPLe         deep text prompts; vision prompts are learnt linear projections of them
    IVLP / PromptSRC  promptkd.teacher.IVLPTeacher (without / with the regularisers)

`METHODS` maps the trainer names to their classes (every registered method is tested).
`ZeroShotCLIP`, the old spelling of `ZeroshotCLIP` (the trainer's registered name), still
resolves, with a FutureWarning, for one release.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones import clip, text_tower, tokenizer
from .encoders import PROMPT_INIT_STD, PromptedImageEncoder, PromptedTextEncoder
from .precision import class_logits, normalise
from .prompt_method import PromptMethod
from .teacher import IVLPTeacher, ensemble_text_features
from .templates import IMAGENET_TEMPLATES
from .errors import ConfigError

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def _names(classnames):
    return [c.replace("_", " ") for c in classnames]


class ZeroshotCLIP(PromptMethod):
    """Stock CLIP's zero-shot classifier: one template or the 80-template ensemble (or the
    ensemble over `templates`, a zero-shot teacher's chosen set named `template_set`)."""

    def __init__(self, clip_model, classnames, template: str = "a photo of a {}.", ensemble: bool = False,
                 templates=None, template_set: str | None = None):
        super().__init__(clip_model, classnames)
        self.template, self.ensemble = template, ensemble or bool(templates)
        self.templates = list(templates) if templates else IMAGENET_TEMPLATES
        self.settings = {"template": template, "ensemble": self.ensemble}
        if templates:
            self.settings.update(templates=template_set or "custom", n_templates=len(self.templates))

    def text_features(self, classnames):
        if self.ensemble:  # unit-norm average over templates (CLIP's ensemble)
            return ensemble_text_features(self.clip, classnames, self.templates, normalise_each=True)
        return self.clip.encode_text(self.tokens([self.template.format(n) for n in _names(classnames)]))


class _ContextPrompts(PromptMethod):
    """Shared by CoOp and CoCoOp: prompts "[SOS] ctx... name ." assembled in embedding space."""

    def __init__(self, clip_model, classnames, n_ctx: int, ctx_init: str, class_specific: bool = False,
                 position: str = "end"):
        super().__init__(clip_model, classnames)
        if position not in CLASS_TOKEN_POSITIONS:
            raise ConfigError(f"CLASS_TOKEN_POSITION '{position}' is not one of {CLASS_TOKEN_POSITIONS}.")
        self.text_encoder = PromptedTextEncoder(clip_model, 0, 0)
        width = text_tower(clip_model).ln_final.weight.shape[0]
        init = " ".join(ctx_init.replace("_", " ").split())
        if init:  # CoOp: the phrase sets n_ctx and initialises the context
            ids = self.text_encoder.tokenizer(init)[0]
            n_ctx = int(ids.argmax()) - 1
            embedding = self.text_encoder.token_embedding
            with torch.no_grad():
                vectors = embedding(ids.to(embedding.weight.device))[1:1 + n_ctx]
        elif n_ctx < 1:
            raise ConfigError(f"N_CTX must be >= 1 without CTX_INIT, got {n_ctx}.")
        else:
            vectors = torch.empty(n_ctx, width).normal_(std=PROMPT_INIT_STD)
        if class_specific:
            vectors = vectors.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(vectors.detach().float().clone())
        self.n_ctx, self.position, self.class_specific = n_ctx, position, class_specific
        self.placeholder = init or " ".join(["X"] * n_ctx)
        self.settings = {"n_ctx": n_ctx, "ctx_init": init, "class_specific": class_specific, "position": position}

    def _tokenize(self, classnames):
        return self.text_encoder.tokenizer([f"{self.placeholder} {n}." for n in _names(classnames)])

    def prompt_embeddings(self, classnames, ctx):
        """Token embeddings [C, L, D] with `ctx` ([n_ctx, D] or [C, n_ctx, D]) in place."""
        tokens = self.tokens(classnames, self._tokenize)
        emb = self.text_encoder.token_embedding(tokens).type(self.text_encoder.dtype)
        c, n = len(classnames), self.n_ctx
        ctx = ctx.to(emb.dtype)
        ctx = ctx.unsqueeze(0).expand(c, -1, -1) if ctx.dim() == 2 else ctx
        prefix, suffix = emb[:, :1], emb[:, 1 + n:]
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1), tokens
        name_lens = [len(clip.clip._tokenizer.encode(name)) for name in _names(classnames)]
        rows, half = [], n // 2
        for i, k in enumerate(name_lens):
            name, rest = suffix[i:i + 1, :k], suffix[i:i + 1, k:]
            if self.position == "middle":
                rows.append(torch.cat([prefix[i:i + 1], ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], rest], 1))
            else:
                rows.append(torch.cat([prefix[i:i + 1], name, ctx[i:i + 1], rest], 1))
        return torch.cat(rows), tokens

    def context_for(self, classnames):
        """The shared context, or the class-specific rows of these (training) classes."""
        if not self.class_specific:
            return self.ctx
        index = {c: i for i, c in enumerate(self.classnames)}
        unknown = [c for c in classnames if c not in index]
        if unknown:
            raise ConfigError(f"Class-specific context (CSC) exists only for the training classes, not for "
                              f"{unknown[:5]}: it cannot encode novel classes. Use CSC False for base-to-novel.")
        return self.ctx[[index[c] for c in classnames]]


class CoOp(_ContextPrompts):
    """Learnable context vectors for the text prompt (Zhou et al., IJCV 2022)."""

    def text_features(self, classnames):
        emb, tokens = self.prompt_embeddings(classnames, self.context_for(classnames))
        return self.text_encoder.encode_embeddings(emb, tokens)


class CoCoOp(_ContextPrompts):
    """CoOp context plus a per-image shift from a meta-network (Zhou et al., CVPR 2022)."""

    image_conditioned = True

    def __init__(self, clip_model, classnames, n_ctx: int = 4, ctx_init: str = "a photo of a"):
        super().__init__(clip_model, classnames, n_ctx, ctx_init)
        vis_dim, ctx_dim = PromptedImageEncoder(clip_model).output_dim, self.ctx.shape[-1]
        self.meta_net = nn.Sequential(nn.Linear(vis_dim, max(1, vis_dim // 16)), nn.ReLU(inplace=True),
                                      nn.Linear(max(1, vis_dim // 16), ctx_dim))

    def context(self, image_feats):
        """[B, n_ctx, D]: the shared context shifted by meta_net(normalised image feature)."""
        return self.ctx.unsqueeze(0) + self.meta_net(image_feats.float()).unsqueeze(1)

    def per_image_logits(self, images, classnames, image_feats=None):
        feats = image_feats if image_feats is not None else normalise(self.image_features(images))
        ctx = self.context(feats)
        logits = []
        for f, c in zip(feats, ctx):
            emb, tokens = self.prompt_embeddings(classnames, c)
            text = normalise(self.text_encoder.encode_embeddings(emb, tokens))
            logits.append(class_logits(f, text, self.logit_scale))
        return torch.stack(logits)


class MaPLe(PromptMethod):
    """Multi-modal prompts (Khattak et al., CVPR 2023): deep text prompts; each vision prompt
    is a learnt linear projection of the text prompt of the same depth."""

    def __init__(self, clip_model, classnames, n_ctx: int = 2, depth: int = 9, ctx_init: str = "a photo of a"):
        super().__init__(clip_model, classnames)
        if depth < 1:
            raise ConfigError(f"MaPLe needs PROMPT_DEPTH >= 1, got {depth}.")
        self.text_encoder = PromptedTextEncoder(clip_model, n_ctx, depth, ctx_init, phrase_may_exceed=True)
        self.image_encoder = PromptedImageEncoder(clip_model, n_ctx, depth, learnable=False)
        text_width = self.text_encoder.ln_final.weight.shape[0]
        self.projections = nn.ModuleList(nn.Linear(text_width, self.image_encoder.width) for _ in range(depth))
        self.settings = {"n_ctx": n_ctx, "depth": depth, "ctx_init": ctx_init}

    def image_prompts(self):
        return [proj(p.float()) for proj, p in zip(self.projections, self.text_encoder.prompts)]

    def image_features(self, images):
        return self.image_encoder(images, prompts=self.image_prompts())

    def text_features(self, classnames):
        return self.text_encoder(self.tokens(classnames, self.text_encoder.tokenize))


METHODS = {
    "ZeroshotCLIP": ZeroshotCLIP,
    "CoOp": CoOp,
    "CoCoOp": CoCoOp,
    "IVLP": IVLPTeacher,
    "MaPLe": MaPLe,
    "PromptSRC": IVLPTeacher,
}


def __getattr__(name: str):
    if name == "ZeroShotCLIP":  # the old spelling; the registered trainer has always been ZeroshotCLIP
        from .moved import warn_moved

        warn_moved("promptkd.baselines.ZeroShotCLIP", "promptkd.baselines.ZeroshotCLIP")
        return ZeroshotCLIP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
