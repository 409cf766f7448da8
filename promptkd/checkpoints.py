"""Checkpoint files: learnable-only state and the published PromptKD/PromptSRC formats.

Our checkpoints hold only what was trained (prompts, projector, BatchNorm buffers) plus plain
numbers, so they load with `torch.load(weights_only=True)`. The published PromptKD/PromptSRC
files were written by torch 1.x and pickle a scheduler object; they load only when the caller
says the file is trusted (config MODEL.TRUST_PICKLED_CHECKPOINTS). Their key layout is
described in docs/running.md ("Published checkpoint layout"). Reading and atomic writing are
`promptkd.io`'s (`atomic_save` and `load_file` here are the names other modules import).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .errors import CheckpointError
from .io import TRUST_KEY, atomic_save, load_torch  # noqa: F401  (re-exported)

#: what to do with a published checkpoint that cannot be read
PUBLISHED_FIX = ("Download the published checkpoint again and put a complete copy of its "
                 "VLPromptLearner/model*.pth.tar file at this path.")


def load_file(path: str, trusted: bool = False, map_location="cpu", *, what: str = "checkpoint", fix: str = ""):
    """torch.load with weights_only=True; pickled objects only if `trusted`, else a clear
    error (`promptkd.io.load_torch`: a missing, empty, truncated or foreign file names `fix`)."""
    return load_torch(path, what=what, fix=fix, trusted=trusted, map_location=map_location)


def learnable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train plus persistent buffers (BatchNorm running stats): what a
    checkpoint needs. Frozen backbone weights are left out."""
    keep = {n for n, p in module.named_parameters() if p.requires_grad}
    keep |= {n for n, _ in module.named_buffers()}
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k in keep}


def load_learnable_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load what `learnable_state_dict` saved; any missing or unexpected key is an error."""
    expected = learnable_state_dict(module)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}. Was it written with other prompt settings?"
        )
    own = dict(module.named_parameters())
    own.update(dict(module.named_buffers()))
    with torch.no_grad():
        for name, value in state.items():
            if own[name].shape != value.shape:
                raise CheckpointError(
                    f"{source}: '{name}' has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(own[name].shape)}."
                )
            own[name].copy_(value)


# --- published checkpoints (layout: docs/running.md, "Published checkpoint layout") --------

_DEEP = re.compile(r"^(image_encoder|text_encoder)\.transformer\.resblocks\.(\d+)\.VPT_shallow$")


def read_published(path: str, trusted: bool) -> dict[str, torch.Tensor]:
    """The `state_dict` of a published `VLPromptLearner/model*.pth.tar`, with a clear error."""
    ckpt = load_file(path, trusted=trusted, what="published PromptKD/PromptSRC checkpoint", fix=PUBLISHED_FIX)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a Dassl checkpoint: no 'state_dict' entry. {PUBLISHED_FIX}")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def _deep_prompts(state: dict, side: str, first_key: str) -> list[torch.Tensor]:
    """[input prompts, block 1, ..., block depth-1] from VPT / VPT_shallow keys."""
    if first_key not in state:
        return []
    blocks = {}
    for key in state:
        m = _DEEP.match(key)
        if m and m.group(1) == side:
            blocks[int(m.group(2))] = state[key]
    depth = len(blocks) + 1
    if sorted(blocks) != list(range(1, depth)):
        raise CheckpointError(f"{side} deep prompts are not contiguous: blocks {sorted(blocks)}.")
    return [state[first_key]] + [blocks[i] for i in range(1, depth)]


def _check_keys(path: str, state: dict, used: set[str], ignorable: tuple[str, ...]) -> None:
    unexpected = sorted(k for k in state if k not in used and not k.startswith(ignorable))
    if unexpected:
        raise CheckpointError(
            f"{path} has keys this reader does not know: {unexpected[:12]}"
            f"{' ...' if len(unexpected) > 12 else ''}. Is it a PromptSRC/PromptKD checkpoint "
            "of the kind expected here (teacher vs student)?"
        )


def split_published_teacher(path: str, trusted: bool = False) -> dict:
    """Read a published PromptSRC/PromptKD teacher into CLIP weights + prompts.

    Returns {"clip_state": CLIP weights (image + text towers and logit_scale) *without* the
    token-embedding table, which these files do not hold (only class-specific prefix/suffix
    embeddings): take it from the stock CLIP of the same backbone; "text_prompts": [...],
    "image_prompts": [...]}. Token prefix/suffix and the frozen zero-shot copy are ignored;
    anything else unknown is an error.
    """
    state = read_published(path, trusted)
    need = ["logit_scale", "prompt_learner.ctx", "image_encoder.proj", "text_encoder.text_projection"]
    missing = [k for k in need if k not in state]
    if missing:
        hint = " It looks like a PromptKD *student* checkpoint." if any(k.startswith("VPT_image_trans") for k in state) else ""
        raise CheckpointError(f"{path} is not a PromptSRC/PromptKD teacher checkpoint: missing {missing}.{hint}")
    clip_state, used = {}, set()
    for key, value in state.items():
        if key.endswith("VPT_shallow") or key in ("image_encoder.VPT", "prompt_learner.ctx"):
            used.add(key)
        elif key.startswith("image_encoder."):
            clip_state["visual." + key[len("image_encoder."):]] = value
            used.add(key)
        elif key.startswith("text_encoder."):
            clip_state[key[len("text_encoder."):]] = value
            used.add(key)
        elif key == "logit_scale":
            clip_state[key] = value
            used.add(key)
    _check_keys(path, state, used, ("prompt_learner.token_prefix", "prompt_learner.token_suffix",
                                    "prompt_learner.ZS_image_encoder."))
    text = _deep_prompts(state, "text_encoder", "prompt_learner.ctx")
    image = _deep_prompts(state, "image_encoder", "image_encoder.VPT")
    return {"clip_state": clip_state, "text_prompts": text, "image_prompts": image}


def split_published_student(path: str, trusted: bool = False) -> dict:
    """Read a published PromptKD student: image-encoder weights, prompts and projector.

    Returns {"visual_state": CLIP `visual.*` weights, "image_prompts": [...], "projector":
    state dict for `student.Projector`, "logit_scale": tensor}.
    """
    state = read_published(path, trusted)
    if "VPT_image_trans.conv1.0.weight" not in state:
        hint = " It looks like a teacher checkpoint." if "prompt_learner.ctx" in state else ""
        raise CheckpointError(f"{path} is not a PromptKD student checkpoint: no VPT_image_trans.* keys.{hint}")
    visual, projector, used = {}, {}, set()
    for key, value in state.items():
        if key.startswith("image_encoder.") and not key.endswith("VPT_shallow") and key != "image_encoder.VPT":
            visual["visual." + key[len("image_encoder."):]] = value
            used.add(key)
        elif key.startswith("VPT_image_trans.conv1."):
            name = key[len("VPT_image_trans.conv1."):]
            projector[name] = value.flatten(1) if value.dim() == 4 else value
            used.add(key)
        elif key.endswith("VPT_shallow") or key in ("image_encoder.VPT", "logit_scale"):
            used.add(key)
    _check_keys(path, state, used, ())
    return {
        "visual_state": visual,
        "image_prompts": _deep_prompts(state, "image_encoder", "image_encoder.VPT"),
        "projector": projector,
        "logit_scale": state["logit_scale"],
    }
