"""fp32 scoring: everything from the features on runs in float32, outside autocast.

Under PREC bf16 / amp the image (and text) towers run inside `torch.autocast`, which casts
every matmul down again, so a `.float()` on the features alone does not make the logits
fp32: `exp(s) · f · Vᵀ` of fp32 inputs comes back in bf16 (logits of 20–35 rounded in steps
of 0.125–0.25, which blurs the teacher's soft targets). The helpers here switch autocast off
for the tensor's device type and compute in fp32:

    normalise(x)                       L2-normalised rows, fp32
    class_logits(f, V, scale)          scale · f · Vᵀ, fp32 (f already normalised)
    fp32_scoring(device_type)          the context itself, for longer fp32 regions
                                       (the PromptKD projector, losses)

Every scorer (student, teacher scorer and its cache, the prompt-learning methods and
baselines, evaluation) goes through these, so there is one place that owns the precision of
the logits. Outside autocast they compute exactly what the plain fp32 expressions did (same
operations in the same order), so the fp32 path is unchanged bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fp32_scoring(device_type: str | torch.device | torch.Tensor):
    """A context with autocast off for `device_type` (a string, a device or a tensor on it)."""
    if isinstance(device_type, torch.Tensor):
        device_type = device_type.device.type
    elif isinstance(device_type, torch.device):
        device_type = device_type.type
    return torch.autocast(device_type, enabled=False)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖ along the last dimension, in fp32, outside autocast."""
    with fp32_scoring(x):
        return F.normalize(x.float(), dim=-1)


def class_logits(features: torch.Tensor, class_vectors: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """scale · features · class_vectorsᵀ in fp32, outside autocast.

    `features` [B, D] and `class_vectors` [C, D] are normalised by the caller; `scale` is the
    multiplier itself (exp of a CLIP logit scale), a tensor or a number."""
    with fp32_scoring(features):
        scale = scale.float() if isinstance(scale, torch.Tensor) else scale
        return scale * features.float() @ class_vectors.float().t()
