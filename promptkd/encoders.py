"""Prompted CLIP encoders: independent deep vision-language prompts (IVLP) on stock CLIP.

Both wrappers hold references to a stock OpenAI CLIP model's modules and walk its transformer
blocks themselves, injecting learnable prompt tokens; CLIP's own code is never copied or
patched. `prompts[i]` are the tokens block i sees (i = 0 is the input layer):

* image: `n_ctx` tokens appended after the positional embedding (no position of their own),
  before `ln_pre`; before block i in 1..depth-1 the last `n_ctx` tokens are replaced.
* text: `n_ctx` context tokens right after SOS, initialised from the embedding of a phrase
  (`CTX_INIT`, "a photo of a"); before block i in 1..depth-1 they are replaced.

With depth 0 both reproduce `CLIP.encode_image` / `CLIP.encode_text` exactly. The frozen CLIP
weights are shared, not copied: freezing them is the owner's job (`freeze_clip`).

`grad_checkpoint = True` on an encoder runs each transformer block under activation
checkpointing (`torch.utils.checkpoint`) while autograd records: only block inputs are kept
for backward and each block is recomputed there (same results, less memory, ~1/3 more compute).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .backbones import clip, is_vit
from .errors import ConfigError

PROMPT_INIT_STD = 0.02


def freeze_clip(clip_model: nn.Module) -> nn.Module:
    for p in clip_model.parameters():
        p.requires_grad_(False)
    return clip_model


def _check_depth(kind: str, n_ctx: int, depth: int, n_layers: int) -> None:
    if depth < 0:
        raise ConfigError(f"{kind} prompt depth must be >= 0, got {depth}.")
    if depth > n_layers:
        raise ConfigError(
            f"{kind} prompt depth {depth} is larger than the encoder's {n_layers} transformer "
            f"layers; set PROMPT_DEPTH_{kind.upper()} to at most {n_layers}."
        )
    if depth > 0 and n_ctx < 1:
        raise ConfigError(f"N_CTX_{kind.upper()} must be >= 1 when prompts are used, got {n_ctx}.")


def run_block(block: nn.Module, x: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """`block(x)`; with `checkpoint` and autograd on, its activations are recomputed in backward."""
    if checkpoint and torch.is_grad_enabled():
        return _checkpoint(block, x, use_reentrant=False)
    return block(x)


def _new_prompts(depth: int, n_ctx: int, width: int) -> nn.ParameterList:
    return nn.ParameterList(
        nn.Parameter(torch.empty(n_ctx, width).normal_(std=PROMPT_INIT_STD)) for _ in range(depth)
    )


class PromptedImageEncoder(nn.Module):
    """CLIP image encoder with deep visual prompts. Output: unnormalised image features."""

    def __init__(self, clip_model: nn.Module, n_ctx: int = 4, depth: int = 0, learnable: bool = True):
        """`clip_model`: a CLIP model or just its image tower (`clip_model.visual`).
        `learnable=False`: no prompt parameters of its own; `forward` is given the prompts
        (e.g. MaPLe's projections of its text prompts)."""
        super().__init__()
        visual = getattr(clip_model, "visual", clip_model)
        if not is_vit(clip_model):
            if depth > 0:
                raise ConfigError(
                    "Deep visual prompts need a ViT backbone; this CLIP has a ResNet image "
                    "encoder. Use a ViT (e.g. ViT-B/16) or set PROMPT_DEPTH_VISION 0."
                )
            n_layers = 0
        else:
            n_layers = len(visual.transformer.resblocks)
        _check_depth("vision", n_ctx, depth, n_layers)
        self.visual = visual
        self.n_ctx = n_ctx if depth > 0 else 0
        self.depth = depth
        self.width = visual.class_embedding.shape[0] if n_layers else None
        self.prompts = _new_prompts(depth, n_ctx, self.width) if depth and learnable else nn.ParameterList()
        self.grad_checkpoint = False

    @property
    def output_dim(self) -> int:
        return self.visual.output_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def forward(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        """`prompts`: per-block prompt tensors to use instead of this encoder's own."""
        prompts = self.prompts if prompts is None else prompts
        v = self.visual
        if not hasattr(v, "transformer"):
            return v(images.type(self.dtype))
        x = v.conv1(images.type(self.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        if self.depth:
            x = torch.cat([x, prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = v.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
        for i, block in enumerate(v.transformer.resblocks):
            if 0 < i < self.depth:
                deep = prompts[i].to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)
                x = torch.cat([x[: -self.n_ctx], deep], dim=0)
            x = run_block(block, x, self.grad_checkpoint)
        x = v.ln_post(x[0])
        return x @ v.proj if v.proj is not None else x


class PromptedTextEncoder(nn.Module):
    """CLIP text encoder with deep text prompts. Output: unnormalised text features.

    `tokenize(classnames)` builds "{CTX_INIT} {classname}." (underscores become spaces); the
    `n_ctx` token embeddings after SOS are then replaced by the learnable context. With depth
    0 the phrase is plain text, so features equal stock `encode_text` of the same sentence.
    """

    def __init__(self, clip_model: nn.Module, n_ctx: int = 4, depth: int = 0, ctx_init: str = "a photo of a",
                 learnable: bool = True, phrase_may_exceed: bool = False):
        """`learnable=False`: no prompt parameters of its own (`forward` is given them).
        `phrase_may_exceed`: a CTX_INIT longer than n_ctx keeps its first n_ctx tokens as the
        learnable context and the rest as fixed text (MaPLe's behaviour); otherwise an error."""
        super().__init__()
        n_layers = len(clip_model.transformer.resblocks)
        _check_depth("text", n_ctx, depth, n_layers)
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.depth = depth
        self.n_ctx = n_ctx if depth > 0 else 0
        self.ctx_init = " ".join(ctx_init.replace("_", " ").split())
        width = self.ln_final.weight.shape[0]
        self.phrase_may_exceed = phrase_may_exceed
        self.grad_checkpoint = False
        self.prompts = _new_prompts(depth, n_ctx, width) if depth else nn.ParameterList()
        if depth:
            self.prefix = self._init_context(n_ctx)
        if not learnable:  # the owner provides the prompts (initialised from self.prompts[0])
            self.init_context = self.prompts[0].detach().clone() if depth else None
            self.prompts = nn.ParameterList()

    def _init_context(self, n_ctx: int) -> str:
        """Initialise prompts[0] from CTX_INIT; return the text that holds the context's place."""
        if not self.ctx_init:
            return " ".join(["X"] * n_ctx)
        ids = clip.tokenize(self.ctx_init)[0]
        n_phrase = int(ids.argmax()) - 1  # tokens between SOS and EOT
        if n_phrase > n_ctx and self.phrase_may_exceed:
            with torch.no_grad():
                emb = self.token_embedding(ids.to(self.token_embedding.weight.device))
                self.prompts[0].copy_(emb[1 : 1 + n_ctx].to(self.prompts[0].dtype))
            return self.ctx_init  # the text after the first n_ctx tokens stays fixed
        if n_phrase > n_ctx:
            raise ConfigError(
                f"CTX_INIT '{self.ctx_init}' is {n_phrase} tokens long but N_CTX_TEXT is {n_ctx}; "
                f"use a phrase of at most {n_ctx} tokens or raise N_CTX_TEXT."
            )
        with torch.no_grad():
            emb = self.token_embedding(ids.to(self.token_embedding.weight.device))
            # A shorter phrase sits next to the class name; random vectors fill the front.
            self.prompts[0][n_ctx - n_phrase:] = emb[1 : 1 + n_phrase].to(self.prompts[0].dtype)
        return " ".join(["X"] * (n_ctx - n_phrase) + [self.ctx_init])

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.dtype

    def tokenize(self, classnames: list[str]) -> torch.Tensor:
        lead = self.prefix if self.depth else self.ctx_init
        texts = [" ".join(f"{lead} {name.replace('_', ' ')}.".split()) for name in classnames]
        return clip.tokenize(texts)

    def forward(self, tokens: torch.Tensor, prompts=None) -> torch.Tensor:
        """`prompts`: per-block prompt tensors to use instead of this encoder's own."""
        prompts = self.prompts if prompts is None else prompts
        x = self.token_embedding(tokens).type(self.dtype)
        if self.depth:
            ctx = prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], ctx, x[:, 1 + self.n_ctx :]], dim=1)
        return self.encode_embeddings(x, tokens, prompts)

    def encode_embeddings(self, x: torch.Tensor, tokens: torch.Tensor, prompts=()) -> torch.Tensor:
        """The text tower from input embeddings [N, L, D] on (deep prompts after block 0, if
        any, replace the n_ctx tokens after SOS). `tokens` locate EOT (argmax)."""
        x = (x + self.positional_embedding.type(self.dtype)).permute(1, 0, 2)  # NLD -> LND
        for i, block in enumerate(self.transformer.resblocks):
            if 0 < i < self.depth and len(prompts) > i:
                deep = prompts[i].to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)
                x = torch.cat([x[:1], deep, x[1 + self.n_ctx :]], dim=0)
            x = run_block(block, x, self.grad_checkpoint)
        x = self.ln_final(x.permute(1, 0, 2)).type(self.dtype)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection

    def encode(self, classnames: list[str]) -> torch.Tensor:
        return self(self.tokenize(classnames).to(self.token_embedding.weight.device))
