"""Prompted CLIP encoders: independent deep vision-language prompts (IVLP) on stock CLIP.

Both wrappers hold references to a stock CLIP model's modules (OpenAI `clip` or `open_clip`)
and walk its transformer blocks themselves, injecting learnable prompt tokens; the libraries'
code is never copied or patched. `prompts[i]` are the tokens block i sees (i = 0 is the input
layer):

* image: `n_ctx` tokens appended after the positional embedding (no position of their own),
  before `ln_pre`; before block i in 1..depth-1 the last `n_ctx` tokens are replaced; they
  are dropped again before pooling.
* text: `n_ctx` context tokens right after SOS, initialised from the embedding of a phrase
  (`CTX_INIT`, "a photo of a"); before block i in 1..depth-1 they are replaced.

What differs between the families (token layout inside the blocks, the embedding step, the
block call, pooling) sits in small per-family tower adapters (`_OpenAIViT`, `_OpenClipViT`,
`_OpenAIText`, `_OpenClipText`); the block loops are shared. Towers whose blocks cannot take
appended tokens (ResNets, timm trunks such as EVA02, SigLIP, ConvNeXt, MobileCLIP) run whole,
at prompt depth 0 only. With depth 0 both wrappers reproduce `encode_image` / `encode_text`
exactly. The frozen CLIP weights are shared, not copied: freezing them is the owner's job
(`freeze_clip`).

`grad_checkpoint = True` on an encoder runs each transformer block under activation
checkpointing (`torch.utils.checkpoint`) while autograd records: only block inputs are kept
for backward and each block is recomputed there (same results, less memory, ~1/3 more compute).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .backbones import is_open_clip, is_vit, text_tower, tokenizer
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


def stream_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype an encoder feeds its tower (input, embeddings, prompts), given one of its
    matrices: the matrix's dtype (fp32; fp16 under PREC fp16, the published pure-fp16 mode), but
    fp32 inside autocast (PREC amp / bf16), where the matrices are in the compute dtype
    (`backbones.to_compute_dtype`) while the text stream, the LayerNorms and the prompts stay
    fp32, as they did with fp32 weights."""
    try:
        autocast = weight.is_floating_point() and torch.is_autocast_enabled(weight.device.type)
    except RuntimeError:  # a device type autocast does not know (meta)
        autocast = False
    return torch.float32 if autocast else weight.dtype


def _new_prompts(depth: int, n_ctx: int, width: int) -> nn.ParameterList:
    return nn.ParameterList(
        nn.Parameter(torch.empty(n_ctx, width).normal_(std=PROMPT_INIT_STD)) for _ in range(depth)
    )


def _replace(x: torch.Tensor, prompt: torch.Tensor, start: int, seq_dim: int) -> torch.Tensor:
    """`x` with tokens [start, start + n) along `seq_dim` replaced by `prompt` [n, D]
    (start < 0: the last n tokens), the same prompt for every sample."""
    n = prompt.shape[0]
    shape = list(x.shape)
    shape[seq_dim] = n
    deep = prompt.to(x.dtype).unsqueeze(1 - seq_dim).expand(*shape)
    length = x.shape[seq_dim]
    start = start % length if start < 0 else start
    return torch.cat([x.narrow(seq_dim, 0, start), deep, x.narrow(seq_dim, start + n, length - start - n)], seq_dim)


# --- image towers --------------------------------------------------------------------------
class _OpenAIViT:
    """`clip.model.VisionTransformer`: blocks run sequence-first (LND); pool = ln_post(CLS) @ proj."""

    seq_dim = 0

    @staticmethod
    def embed(v, images):
        x = v.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)

    @staticmethod
    def enter(v, x):
        return v.ln_pre(x).permute(1, 0, 2)  # NLD -> LND

    @staticmethod
    def pool(v, x):
        x = v.ln_post(x[0])
        return x @ v.proj if v.proj is not None else x


class _OpenClipViT:
    """`open_clip.transformer.VisionTransformer` (LayerScale lives inside its blocks): batch-first
    blocks, patch dropout after the positions, pooling by the tower's own `_pool` (CLS or
    average, ln_post before or after)."""

    seq_dim = 1

    @staticmethod
    def embed(v, images):
        return v.patch_dropout(_OpenAIViT.embed(v, images))

    @staticmethod
    def enter(v, x):
        return v.ln_pre(x)

    @staticmethod
    def pool(v, x):
        pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled


def _image_adapter(visual: nn.Module):
    """The adapter of a tower whose blocks take appended prompt tokens, else None."""
    if not is_vit(visual):
        return None
    if not is_open_clip(visual):
        return _OpenAIViT
    ok = (type(visual).__name__ == "VisionTransformer" and getattr(visual, "attn_pool", None) is None
          and getattr(visual.transformer, "batch_first", False) and hasattr(visual, "_pool"))
    return _OpenClipViT if ok else None


def _tower_name(visual: nn.Module) -> str:
    trunk = getattr(visual, "trunk", None)
    return f"{type(visual).__name__}" + (f" ({type(trunk).__name__} trunk)" if trunk is not None else "")


class PromptedImageEncoder(nn.Module):
    """CLIP image encoder with deep visual prompts. Output: unnormalised image features."""

    def __init__(self, clip_model: nn.Module, n_ctx: int = 4, depth: int = 0, learnable: bool = True):
        """`clip_model`: a CLIP model or just its image tower (`clip_model.visual`).
        `learnable=False`: no prompt parameters of its own; `forward` is given the prompts
        (e.g. MaPLe's projections of its text prompts)."""
        super().__init__()
        visual = getattr(clip_model, "visual", clip_model)
        self.tower = _image_adapter(visual)
        if self.tower is None:
            if depth > 0:
                what = ("this CLIP has a ResNet image encoder" if not is_vit(visual) and not is_open_clip(visual)
                        else f"this image tower ({_tower_name(visual)}) has no blocks that take appended tokens")
                raise ConfigError(
                    f"Deep visual prompts need a ViT backbone; {what}. Use a native ViT (e.g. ViT-B/16 or an "
                    "open_clip ViT-*) or set PROMPT_DEPTH_VISION 0 (zero-shot use of this tower)."
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
        out = getattr(self.visual, "output_dim", None)
        if out is None:  # an open_clip timm tower: its head projects, or the trunk's features are the output
            head = [m for m in self.visual.head.modules() if isinstance(m, nn.Linear)]
            out = head[-1].out_features if head else self.visual.trunk.num_features
        return out

    @property
    def dtype(self) -> torch.dtype:
        conv = getattr(self.visual, "conv1", None)
        return stream_dtype(conv.weight if conv is not None else next(self.visual.parameters()))

    def forward(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        """`prompts`: per-block prompt tensors to use instead of this encoder's own."""
        prompts = self.prompts if prompts is None else prompts
        v, t = self.visual, self.tower
        if t is None:
            return v(images.type(self.dtype))
        x = t.embed(v, images.type(self.dtype))  # [N, L, D] with class token and positions
        if self.depth:
            x = torch.cat([x, prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = t.enter(v, x)  # ln_pre, then the blocks' token layout
        for i, block in enumerate(v.transformer.resblocks):
            if 0 < i < self.depth:
                x = _replace(x, prompts[i], -self.n_ctx, t.seq_dim)
            x = run_block(block, x, self.grad_checkpoint)
        if self.n_ctx:
            x = x.narrow(t.seq_dim, 0, x.shape[t.seq_dim] - self.n_ctx)
        return t.pool(v, x)


# --- text towers ---------------------------------------------------------------------------
class _OpenAIText:
    """OpenAI CLIP: sequence-first blocks with the causal mask built in."""

    seq_dim = 0

    @staticmethod
    def blocks(enc):
        return enc.transformer.resblocks

    @staticmethod
    def project(enc, x):
        return x @ enc.text_projection


class _OpenClipText:
    """open_clip CLIP / TextTransformer: batch-first blocks that take the model's causal mask."""

    seq_dim = 1

    @staticmethod
    def blocks(enc):
        mask = enc.attn_mask
        return [lambda y, b=b: b(y, attn_mask=mask) for b in enc.transformer.resblocks]

    @staticmethod
    def project(enc, x):
        proj = enc.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def _text_adapter(tower: nn.Module):
    if not is_open_clip(tower):
        return _OpenAIText
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
    if (pool != "argmax" or getattr(tower, "attn_mask", None) is None or getattr(tower, "cls_emb", None) is not None
            or getattr(tower, "use_pad_mask", False) or not getattr(tower.transformer, "batch_first", False)):
        raise ConfigError(f"This open_clip text tower ({type(tower).__name__}, pooling '{pool}') is not a causal "
                          "CLIP text transformer pooled at the end-of-text token; it cannot be prompted or encoded "
                          "here. Use this model as a PromptKD student (image tower only).")
    return _OpenClipText


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
        text = text_tower(clip_model)
        self.tower = _text_adapter(text)
        self.tokenizer = tokenizer(clip_model)
        n_layers = len(text.transformer.resblocks)
        _check_depth("text", n_ctx, depth, n_layers)
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", getattr(text, "attn_mask", None), persistent=False)
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
        ids = self.tokenizer(self.ctx_init)[0]
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
        proj = self.text_projection
        if isinstance(proj, nn.Linear):
            return stream_dtype(proj.weight)
        return stream_dtype(proj if proj is not None else self.transformer.resblocks[0].mlp.c_fc.weight)

    def tokenize(self, classnames: list[str]) -> torch.Tensor:
        lead = self.prefix if self.depth else self.ctx_init
        texts = [" ".join(f"{lead} {name.replace('_', ' ')}.".split()) for name in classnames]
        return self.tokenizer(texts)

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
        t = self.tower
        x = x + self.positional_embedding.type(self.dtype)
        x = x.permute(1, 0, 2) if t.seq_dim == 0 else x  # NLD -> the blocks' token layout
        for i, block in enumerate(t.blocks(self)):
            if 0 < i < self.depth and len(prompts) > i:
                x = _replace(x, prompts[i], 1, t.seq_dim)
            x = run_block(block, x, self.grad_checkpoint)
        x = x.permute(1, 0, 2) if t.seq_dim == 0 else x
        x = self.ln_final(x).type(self.dtype)
        # the EOT token of each row; the row index is made on x's device (no host-to-device copy)
        return t.project(self, x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1).to(x.device)])

    def encode(self, classnames: list[str]) -> torch.Tensor:
        return self(self.tokenize(classnames).to(self.token_embedding.weight.device))
