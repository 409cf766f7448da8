"""Random-weight tiny CLIP checkpoints that load through the real `clip` loading path.

The `clip` package infers every size from a state dict (heads = width // 64), so a tiny model
written as a plain state-dict file loads exactly like OpenAI's `ViT-B-16.pt`. Used by the
tests and the demo; the same seed always gives the same weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..backbones import clip  # the installed OpenAI clip, even where a host's clip/ shadows the name
from ..io import atomic_save, atomic_write_json


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
        model = clip.model.CLIP(
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
    clip.model.convert_weights(model)  # fp16 like OpenAI's released files, so every loading path agrees
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_tiny_clip(path: str, spec: TinySpec = TinySpec(), seed: int = 0) -> str:
    """Write a tiny CLIP state-dict file at `path` (once; an existing file is kept)."""
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_save(tiny_clip_state_dict(spec, seed), path)
    return path


# Tiny open_clip architectures (open_clip model configs): a teacher with LayerScale, GELU, a
# 48 px input, mean / std 0.5 and squashed test images (as DFN5B's ViT-H/14), so that size,
# normalisation and test-time resizing differ from the OpenAI students.
TINY_OPEN_CLIP = {
    "tiny-oc-teacher": {
        "embed_dim": 96, "quick_gelu": False,
        "vision_cfg": {"image_size": 48, "layers": 3, "width": 128, "patch_size": 16, "ls_init_value": 0.5},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                           "resize_mode": "squash"},
    },
    "tiny-oc-student": {
        "embed_dim": 64, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
}


def write_tiny_open_clip(folder: str, arch: str = "tiny-oc-teacher", seed: int = 0, config: dict | None = None) -> str:
    """Write `<folder>/<arch>.json` (an open_clip model config) and `<folder>/<arch>.pt` (random
    weights of that open_clip CLIP); return the backbone name `open_clip:<arch>/<weights>`.
    Loads through open_clip's own builder and checkpoint reader, offline."""
    import open_clip

    config = config or TINY_OPEN_CLIP[arch]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{arch}.pt")
    if not os.path.isfile(path):
        atomic_write_json(os.path.join(folder, f"{arch}.json"), config)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            kwargs = {k: v for k, v in config.items() if k != "preprocess_cfg"}
            model = open_clip.model.CLIP(**kwargs)
        finally:
            torch.random.set_rng_state(generator_state)
        atomic_save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    return f"open_clip:{arch}/{path}"
