"""Random-weight tiny CLIP checkpoints that load through the real `clip` loading path.

The `clip` package infers every size from a state dict (heads = width // 64), so a tiny model
written as a plain state-dict file loads exactly like OpenAI's `ViT-B-16.pt`. Used by the
tests and the demo; the same seed always gives the same weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from clip.model import CLIP, convert_weights

from .checkpoints import atomic_save


@dataclass(frozen=True)
class TinySpec:
    embed_dim: int = 64
    image_resolution: int = 32
    vision_layers: int = 2
    vision_width: int = 64
    vision_patch_size: int = 8
    text_width: int = 64
    text_layers: int = 2
    context_length: int = 77
    vocab_size: int = 49408  # the real BPE vocabulary, so clip.tokenize works unchanged


# A teacher and a student of different widths, so that projector sizes are really derived.
TINY_TEACHER = TinySpec(embed_dim=96, vision_layers=3, vision_width=128, text_width=128, text_layers=3)
TINY_STUDENT = TinySpec(embed_dim=64, vision_layers=2, vision_width=64, text_width=64, text_layers=2)


def tiny_clip_state_dict(spec: TinySpec = TinySpec(), seed: int = 0) -> dict:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = CLIP(
            embed_dim=spec.embed_dim,
            image_resolution=spec.image_resolution,
            vision_layers=spec.vision_layers,
            vision_width=spec.vision_width,
            vision_patch_size=spec.vision_patch_size,
            context_length=spec.context_length,
            vocab_size=spec.vocab_size,
            transformer_width=spec.text_width,
            transformer_heads=max(1, spec.text_width // 64),
            transformer_layers=spec.text_layers,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    convert_weights(model)  # fp16 like OpenAI's released files, so every loading path agrees
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_tiny_clip(path: str, spec: TinySpec = TinySpec(), seed: int = 0) -> str:
    """Write a tiny CLIP state-dict file at `path` (once; an existing file is kept)."""
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_save(tiny_clip_state_dict(spec, seed), path)
    return path
