"""The PromptKD student: a prompted CLIP image tower, a projector, and stored class vectors.

logits = exp(logit_scale) · normalise(projector(f)) · Vᵀ, where f is the student's
*unnormalised* image feature and V the teacher's pre-stored, L2-normalised class vectors.
Only the visual prompts and the projector train; the student never runs a text encoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import PromptedImageEncoder, freeze_clip
from .errors import CheckpointError
from .precision import class_logits, fp32_scoring, normalise


class Projector(nn.Sequential):
    """Student width Ds -> class-vector width Dt: Linear, BatchNorm, ReLU, Linear.

    Indices 0, 1, 3 match the published `VPT_image_trans.conv1.{0,1,3}` (1×1 convs there,
    which are the same maps as these linears on a [B, D] feature).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True),
                         nn.Linear(out_dim, out_dim))


class PromptKDStudent(nn.Module):
    def __init__(self, visual: nn.Module, logit_scale: torch.Tensor, class_dim: int, n_ctx: int = 4, depth: int = 9):
        """`visual`: a stock CLIP image tower (frozen here); `class_dim`: the width of the
        teacher's class vectors. The projector's sizes come from these two models."""
        super().__init__()
        freeze_clip(visual)
        self.image_encoder = PromptedImageEncoder(visual, n_ctx=n_ctx, depth=depth)
        self.projector = Projector(self.image_encoder.output_dim, class_dim)
        self.register_buffer("logit_scale", logit_scale.detach().float().clone().reshape(()))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """normalise(projector(f)) in fp32: the tower may run under autocast, the projector
        and everything after it do not (`promptkd.precision`)."""
        f = self.image_encoder(images)
        with fp32_scoring(f):
            return F.normalize(self.projector(f.float()), dim=-1)

    def forward(self, images: torch.Tensor, class_vectors: torch.Tensor, with_features: bool = False):
        """Logits [B, C] against `class_vectors`; with `with_features`, (logits, projected features)."""
        features = self.features(images)
        logits = class_logits(features, class_vectors, self.logit_scale.exp())
        return (logits, features) if with_features else logits


def teacher_logits(embeddings: torch.Tensor, logit_scale: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) · e · Vᵀ for normalised teacher embeddings e: the online teacher and
    the teacher cache (`teacher_cache.py`, which stores e) both score through this; fp32,
    outside autocast (`promptkd.precision`)."""
    with fp32_scoring(embeddings):
        return class_logits(embeddings, class_vectors, logit_scale.exp())


class TeacherImageScorer(nn.Module):
    """The frozen teacher's image side in stage 2: prompted image tower + logit scale.

    logits = exp(logit_scale) · normalise(f_teacher) · Vᵀ (`embed`, then `teacher_logits`).
    Always in eval mode, no gradients. The batch is re-fitted to the teacher's input size and
    normalisation first if they differ.
    """

    def __init__(self, visual: nn.Module, logit_scale: torch.Tensor, prompts: list[torch.Tensor],
                 input_adapter: nn.Module | None = None):
        """`input_adapter`: fits the student's batch to this tower's input size and normalisation
        (`promptkd.image_inputs.TowerInput`); None when they agree."""
        super().__init__()
        freeze_clip(visual)
        self.input_adapter = input_adapter if input_adapter is not None else nn.Identity()
        n_ctx = prompts[0].shape[0] if prompts else 0
        self.image_encoder = PromptedImageEncoder(visual, n_ctx=n_ctx, depth=len(prompts))
        with torch.no_grad():
            for p, value in zip(self.image_encoder.prompts, prompts):
                p.copy_(value)
                p.requires_grad_(False)
        self.register_buffer("logit_scale", logit_scale.detach().float().clone().reshape(()))
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised teacher image embeddings [B, D] (float32): what the teacher cache stores."""
        return normalise(self.image_encoder(self.input_adapter(images)))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        return teacher_logits(self.embed(images), self.logit_scale, class_vectors)


def load_published_student(student: PromptKDStudent, path: str, trusted: bool = False) -> None:
    """Load a published PromptKD student (key layout: docs/running.md) into `student` in place:
    its backbone weights, visual prompts, projector (1×1 convs -> linears) with BatchNorm stats,
    logit scale."""
    from .checkpoints import split_published_student

    pub = split_published_student(path, trusted)
    enc = student.image_encoder
    prompts = pub["image_prompts"]
    if len(prompts) != enc.depth or (prompts and prompts[0].shape[0] != enc.n_ctx):
        n = prompts[0].shape[0] if prompts else 0
        raise CheckpointError(f"{path} has visual prompts of depth {len(prompts)} with {n} tokens; set "
                              f"PROMPT_DEPTH_VISION {len(prompts)} and N_CTX_VISION {n} to load it.")
    with torch.no_grad():
        try:
            enc.visual.load_state_dict({k[len("visual."):]: v for k, v in pub["visual_state"].items()})
            student.projector.load_state_dict(pub["projector"])
        except RuntimeError as err:
            raise CheckpointError(f"{path} does not fit this student (backbone or class-vector width): "
                                  f"{str(err).splitlines()[0]} Use the student backbone and teacher it was "
                                  "trained with (ViT-B/16 and a ViT-L/14 teacher for the paper).") from None
        for p, value in zip(enc.prompts, prompts):
            p.copy_(value)
        student.logit_scale.copy_(pub["logit_scale"].reshape(()))
