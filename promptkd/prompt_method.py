"""The small interface every prompt-learning method implements here (see docs/NEW_METHOD.md).

A method wraps one frozen stock CLIP and says how it turns images and class names into
features. Everything else (training with cross-entropy, base / novel evaluation, exporting
class vectors so that PromptKD can distil from it) is shared:

    image_features(images)     -> [B, D] unnormalised image features (prompted or not)
    text_features(classnames)  -> [C, D] unnormalised text features of those classes
    image_prompts()            -> the deep visual prompts the image side uses (list, may be [])
    extra_losses(out, labels)  -> optional regularisers added to cross-entropy (dict)

A method whose text features depend on the image (CoCoOp) sets `image_conditioned = True`
and overrides `per_image_logits`; it trains and evaluates, but has no class vectors to export.
`set_grad_checkpoint(text, image)` turns activation checkpointing on in its prompted towers.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones import tokenizer
from .class_vectors import ClassVectors, ImageSide, visual_fingerprint
from .encoders import PromptedImageEncoder, PromptedTextEncoder, freeze_clip
from .errors import ConfigError
from .precision import class_logits, normalise

# Prompts per encoder call when many are encoded at once without autograd (class vectors,
# template ensembles): bounds the peak memory of that encoding whatever the number of classes.
ENCODE_CHUNK = 256


class PromptMethod(nn.Module):
    image_conditioned = False

    def __init__(self, clip_model: nn.Module, classnames: list[str]):
        super().__init__()
        self.clip = freeze_clip(clip_model)
        self.classnames = list(classnames)
        self.settings: dict = {}  # prompt settings, recorded in exported class vectors
        self._eval_vectors = None

    # --- to implement -----------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)

    def text_features(self, classnames: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def image_prompts(self) -> list[torch.Tensor]:
        return []

    def extra_losses(self, out: dict, labels: torch.Tensor) -> dict:
        return {}

    # --- shared -----------------------------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        # The frozen CLIP is referenced by name / fingerprint, never saved with the prompts.
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if not k.startswith("clip.")}

    def set_grad_checkpoint(self, text: bool, image: bool) -> dict:
        """Activation checkpointing per transformer block in this method's prompted text and/or
        image towers (results are unchanged; see `promptkd.encoders.run_block`). Returns the
        towers it is on in: {"text": bool, "image": bool}; a tower the method does not
        backpropagate through (stock encode_image, no visual prompts) stays off."""
        on = {"text": False, "image": False}
        for module in self.modules():
            if isinstance(module, PromptedTextEncoder):
                module.grad_checkpoint = bool(text)
                on["text"] |= bool(text)
            elif isinstance(module, PromptedImageEncoder):
                module.grad_checkpoint = bool(image) and module.depth > 0
                on["image"] |= module.grad_checkpoint
        return on

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().float()

    def tokens(self, classnames: list[str], tokenize=None) -> torch.Tensor:
        """`tokenize(classnames)` (default: the plain names), cached for the last class list."""
        key = tuple(classnames)
        if getattr(self, "_token_cache", (None,))[0] != key:
            tokens = (tokenize or tokenizer(self.clip))(list(classnames))
            self._token_cache = (key, tokens.to(self.clip.logit_scale.device))
        return self._token_cache[1]

    def forward(self, images: torch.Tensor) -> dict:
        """Logits over the training classes, plus the features the losses need."""
        image_feats = normalise(self.image_features(images))
        if self.image_conditioned:
            return {"logits": self.per_image_logits(images, self.classnames, image_feats), "image_feats": image_feats}
        text_feats = normalise(self.text_features(self.classnames))
        return {"logits": class_logits(image_feats, text_feats, self.logit_scale),
                "image_feats": image_feats, "text_feats": text_feats}

    def per_image_logits(self, images: torch.Tensor, classnames: list[str], image_feats=None) -> torch.Tensor:
        """Image-conditioned methods: logits [B, C] with text features computed per image."""
        raise NotImplementedError

    @torch.no_grad()
    def class_vectors(self, classnames: list[str], batch: int = ENCODE_CHUNK) -> torch.Tensor:
        """L2-normalised text features of `classnames`, in the given order (no autograd, in
        chunks of `batch` classes)."""
        if self.image_conditioned:
            raise ConfigError(f"{type(self).__name__}'s text features depend on the image: it has no class "
                              "vectors, so it cannot be exported or act as a PromptKD teacher.")
        feats = [self.text_features(classnames[i:i + batch]).float() for i in range(0, len(classnames), batch)]
        return normalise(torch.cat(feats))

    @torch.no_grad()
    def prepare_eval(self, classnames: list[str]) -> None:
        """Encode the evaluation classes once (not per test batch)."""
        self._eval_classnames = list(classnames)
        self._eval_vectors = None if self.image_conditioned else self.class_vectors(classnames)

    def eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_conditioned:
            return self.per_image_logits(images, self._eval_classnames)
        return class_logits(normalise(self.image_features(images)), self._eval_vectors, self.logit_scale)

    @torch.no_grad()
    def export(self, classnames: list[str], dataset: str, backbone: dict, method: str | None = None):
        """(ClassVectors of all `classnames`, ImageSide) of this method as it is now."""
        method = method or type(self).__name__
        vectors = self.class_vectors(classnames).cpu()
        fp = visual_fingerprint(self.clip.visual)
        scale = float(self.clip.logit_scale.float().item())
        teacher = {"backbone": backbone, "fingerprint": fp, "method": method,
                   "prompts": dict(self.settings), "logit_scale": scale}
        side = ImageSide(backbone=backbone, fingerprint=fp, logit_scale=scale, width=vectors.shape[1],
                         prompts=[p.detach().float().cpu() for p in self.image_prompts()], method=method)
        return ClassVectors(vectors=vectors, classnames=list(classnames), dataset=dataset, teacher=teacher), side
