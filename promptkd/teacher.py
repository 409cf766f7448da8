"""The stage-1 teacher: a CLIP with IVLP prompts trained PromptSRC-style, and its export.

`IVLPTeacher` scores images against the prompted text features of the training classes and
also returns what PromptSRC's regularisers compare with: the frozen CLIP's image features
(the same backbone without prompts, so no second copy is kept) and frozen template-ensemble
text features. `export()` encodes every class once into `ClassVectors` and `ImageSide`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import clip
from .class_vectors import ClassVectors, ImageSide, visual_fingerprint
from .encoders import PromptedImageEncoder, PromptedTextEncoder, freeze_clip
from .templates import IMAGENET_TEMPLATES


@torch.no_grad()
def ensemble_text_features(clip_model: nn.Module, classnames: list[str], templates=IMAGENET_TEMPLATES,
                           chunk: int = 256) -> torch.Tensor:
    """Frozen CLIP text features averaged (unnormalised) over templates, then normalised."""
    device = clip_model.text_projection.device
    out = []
    for name in classnames:
        tokens = clip.tokenize([t.format(name.replace("_", " ")) for t in templates]).to(device)
        feats = torch.cat([clip_model.encode_text(tokens[i:i + chunk]) for i in range(0, len(tokens), chunk)])
        out.append(feats.float().mean(dim=0))
    return F.normalize(torch.stack(out), dim=-1)


class IVLPTeacher(nn.Module):
    def __init__(self, clip_model: nn.Module, classnames: list[str], n_ctx_text: int = 4, depth_text: int = 9,
                 ctx_init: str = "a photo of a", n_ctx_vision: int = 4, depth_vision: int = 9,
                 regularise: bool = True):
        super().__init__()
        self.clip = freeze_clip(clip_model)
        self.image_encoder = PromptedImageEncoder(clip_model, n_ctx_vision, depth_vision)
        self.text_encoder = PromptedTextEncoder(clip_model, n_ctx_text, depth_text, ctx_init)
        self.classnames = list(classnames)
        self.register_buffer("tokens", self.text_encoder.tokenize(self.classnames), persistent=False)
        self.regularise = regularise
        self.zs_text = None  # frozen template-ensemble features, built at the first training step
        self.prompt_settings = {"n_ctx_text": n_ctx_text, "depth_text": depth_text, "ctx_init": ctx_init,
                                "n_ctx_vision": n_ctx_vision, "depth_vision": depth_vision}

    def state_dict(self, *args, **kwargs):
        # The frozen CLIP is referenced by name / fingerprint, never saved with the prompts.
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if not k.startswith("clip.")}

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().float()

    def forward(self, images: torch.Tensor) -> dict:
        image_feats = F.normalize(self.image_encoder(images).float(), dim=-1)
        text_feats = F.normalize(self.text_encoder(self.tokens).float(), dim=-1)
        out = {"logits": self.logit_scale * image_feats @ text_feats.t(),
               "image_feats": image_feats, "text_feats": text_feats}
        if self.regularise and self.training:
            if self.zs_text is None or self.zs_text.device != image_feats.device:
                self.zs_text = ensemble_text_features(self.clip, self.classnames).to(image_feats.device)
            with torch.no_grad():
                zs_image = F.normalize(self.clip.encode_image(images).float(), dim=-1)
            out.update(zs_image_feats=zs_image, zs_text_feats=self.zs_text,
                       zs_logits=self.logit_scale * zs_image @ self.zs_text.t())
        return out

    @torch.no_grad()
    def class_vectors(self, classnames: list[str], batch: int = 256) -> torch.Tensor:
        """L2-normalised prompted text features of `classnames`, in the given order."""
        feats = [self.text_encoder.encode(classnames[i:i + batch]).float() for i in range(0, len(classnames), batch)]
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.no_grad()
    def export(self, classnames: list[str], dataset: str, backbone: dict, method: str = "PromptKDTeacher"):
        """(ClassVectors of all `classnames`, ImageSide) of this teacher as it is now."""
        vectors = self.class_vectors(classnames).cpu()
        fp = visual_fingerprint(self.clip.visual)
        scale = float(self.clip.logit_scale.float().item())
        teacher = {"backbone": backbone, "fingerprint": fp, "method": method,
                   "prompts": dict(self.prompt_settings), "logit_scale": scale}
        side = ImageSide(backbone=backbone, fingerprint=fp, logit_scale=scale, width=vectors.shape[1],
                         prompts=[p.detach().float().cpu() for p in self.image_encoder.prompts], method=method)
        return ClassVectors(vectors=vectors, classnames=list(classnames), dataset=dataset, teacher=teacher), side


def load_published_teacher(model: IVLPTeacher, path: str, trusted: bool = False) -> None:
    """Load a published PromptSRC/PromptKD teacher (spec §3) into `model` in place.

    The checkpoint's backbone weights replace the stock ones (its token-embedding table is
    not stored, so the stock table stays); prompt depths and n_ctx must match `model`.
    """
    from .checkpoints import split_published_teacher

    pub = split_published_teacher(path, trusted)
    for side, prompts, enc, key in (("text", pub["text_prompts"], model.text_encoder, "TEXT"),
                                    ("vision", pub["image_prompts"], model.image_encoder, "VISION")):
        if len(prompts) != enc.depth or (prompts and prompts[0].shape[0] != enc.n_ctx):
            n = prompts[0].shape[0] if prompts else 0
            raise ValueError(f"{path} has {side} prompts of depth {len(prompts)} with {n} tokens; set "
                             f"PROMPT_DEPTH_{key} {len(prompts)} and N_CTX_{key} {n} to load it.")
    own = model.clip.state_dict()
    unknown = sorted(k for k in pub["clip_state"] if k not in own)
    if unknown:
        raise KeyError(f"{path}: backbone keys not in the CLIP model {unknown[:10]}; is MODEL.BACKBONE.NAME "
                       "the backbone this teacher was trained on?")
    bad = [k for k, v in pub["clip_state"].items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{path}: backbone shapes differ from MODEL.BACKBONE.NAME for {bad[:5]}; use the "
                         "backbone this teacher was trained on (ViT-L/14 for the paper's teacher).")
    with torch.no_grad():
        model.clip.load_state_dict({**own, **pub["clip_state"]})
        for p, value in zip(list(model.text_encoder.prompts) + list(model.image_encoder.prompts),
                            pub["text_prompts"] + pub["image_prompts"]):
            p.copy_(value)
