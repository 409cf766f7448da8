"""CoOp in the fixture host: a learnable context shared by all classes ("X X ... X <class>.")
before each class name, in front of a frozen CLIP.

The model follows the MaPLe / PromptSRC pattern: `forward(image, label)` returns the
cross-entropy loss while the prompt learner is in training mode, and the logits otherwise.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint

from clip import clip

DESIGN_DETAILS = {"trainer": "CoOp", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0, "language_ctx": 0}


def load_clip_to_cpu(cfg):
    """MODEL.BACKBONE.NAME is one of clip._MODELS (downloaded) or the path of a CLIP file."""
    name = cfg.MODEL.BACKBONE.NAME
    path = name if os.path.isfile(name) else clip._download(clip._MODELS[name])
    try:
        model = torch.jit.load(path, map_location="cpu").eval()
        state_dict = None
    except RuntimeError:
        state_dict = torch.load(path, map_location="cpu")
    return clip.build_model(state_dict or model.state_dict(), DESIGN_DETAILS)


class TextEncoder(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompts, tokenized_prompts):
        x = (prompts + self.positional_embedding.type(self.dtype)).permute(1, 0, 2)
        x = self.ln_final(self.transformer(x).permute(1, 0, 2)).type(self.dtype)
        end_of_text = tokenized_prompts.argmax(dim=-1)
        return x[torch.arange(x.shape[0]), end_of_text] @ self.text_projection


class PromptLearner(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        opts = cfg.TRAINER.COOP
        if opts.CLASS_TOKEN_POSITION != "end":
            raise ValueError("this host's CoOp puts the class token at the end only "
                             f"(TRAINER.COOP.CLASS_TOKEN_POSITION {opts.CLASS_TOKEN_POSITION!r})")
        dtype = clip_model.dtype
        width = clip_model.ln_final.weight.shape[0]
        if opts.CTX_INIT:
            words = opts.CTX_INIT.replace("_", " ")
            n_ctx = len(words.split())
            with torch.no_grad():
                embedding = clip_model.token_embedding(clip.tokenize(words)).type(dtype)
            ctx = embedding[0, 1:1 + n_ctx]
            if opts.CSC:
                ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
        else:
            words = " ".join(["X"] * opts.N_CTX)
            n_ctx = opts.N_CTX
            shape = (len(classnames), n_ctx, width) if opts.CSC else (n_ctx, width)
            ctx = nn.init.normal_(torch.empty(*shape, dtype=dtype), std=0.02)
        self.ctx = nn.Parameter(ctx.clone())
        print(f'Initial context: "{words}" ({n_ctx} context words)')

        names = [name.replace("_", " ") for name in classnames]
        tokenized = torch.cat([clip.tokenize(f"{words} {name}.") for name in names])
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized).type(dtype)
        # fixed parts, saved with the learner but not loaded back (load_model drops them)
        self.register_buffer("token_prefix", embedding[:, :1])  # start of text
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:])  # class name, ".", end of text
        self.tokenized_prompts = tokenized
        self.n_cls = len(names)

    def forward(self):
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class CustomCLIP(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        self.prompt_learner = PromptLearner(cfg, classnames, clip_model)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image, label=None):
        image_features = F.normalize(self.image_encoder(image.type(self.dtype)), dim=-1)
        text_features = self.text_encoder(self.prompt_learner(), self.tokenized_prompts.to(image.device))
        logits = self.logit_scale.exp() * image_features @ F.normalize(text_features, dim=-1).t()
        if self.prompt_learner.training:
            return F.cross_entropy(logits.float(), label)
        return logits


@TRAINER_REGISTRY.register()
class CoOp(TrainerX):
    def check_cfg(self, cfg):
        assert cfg.TRAINER.COOP.PREC in ("fp16", "fp32", "amp")

    def build_model(self):
        cfg = self.cfg
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip_to_cpu(cfg)
        if cfg.TRAINER.COOP.PREC in ("fp32", "amp"):
            clip_model.float()
        print("Building custom CLIP")
        self.model = CustomCLIP(cfg, self.dm.dataset.classnames, clip_model)
        for name, param in self.model.named_parameters():
            param.requires_grad_("prompt_learner" in name)
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        loss = self.model(image, label)
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def load_model(self, directory, epoch=None):
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            path = os.path.join(directory, name, model_file)
            if not os.path.exists(path):
                raise FileNotFoundError(f'Model not found at "{path}"')
            checkpoint = load_checkpoint(path)
            state_dict = checkpoint["state_dict"]
            for fixed in ("token_prefix", "token_suffix"):  # built from the class names
                state_dict.pop(fixed, None)
            print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint["epoch"]})')
            self._models[name].load_state_dict(state_dict, strict=False)
