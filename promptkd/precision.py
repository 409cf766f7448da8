"""Precision, in one place: the run's mode (`Precision`: fp32, fp16, amp, bf16 -> backbone
weights, autocast dtype, grad scaler) and fp32 scoring (everything from the features on runs
in float32, outside autocast).

    Precision.resolve(prec, device)    the mode for this device; .autocast() is the context
                                       the towers run in, .scaler the GradScaler (amp on GPU)

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

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)
#: The PREC settings: fp32; fp16 (frozen backbone in half, learnable parts fp32: the published
#: behaviour); amp (autocast fp16 + grad scaler on a GPU, bf16 autocast on a CPU); bf16 (autocast bf16).
PRECISIONS = ("fp32", "fp16", "amp", "bf16")


@dataclass
class Precision:
    prec: str                            # the mode actually used on this device
    backbone_mode: str                   # "fp16" (the published pure-fp16 backbone) or "fp32"; under
                                         # amp / bf16 the matrices are in autocast's dtype (frozen_dtype)
    autocast_dtype: torch.dtype | None   # None: no autocast
    scaler: torch.amp.GradScaler | None  # amp on a GPU
    device_type: str

    @classmethod
    def resolve(cls, prec: str, device: torch.device) -> "Precision":
        if prec not in PRECISIONS:
            raise ValueError(f"precision {prec!r}: use one of {', '.join(PRECISIONS)}")
        if prec == "amp" and device.type != "cuda":
            logger.warning("PREC amp uses fp16 autocast on a GPU; on %s it runs as bf16 autocast.", device.type)
            prec = "bf16"
        return cls(prec, "fp16" if prec == "fp16" else "fp32", {"amp": torch.float16, "bf16": torch.bfloat16}.get(prec),
                   torch.amp.GradScaler("cuda") if prec == "amp" else None, device.type)

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The dtype of the frozen towers' matrices: fp16 (PREC fp16), autocast's compute dtype
        (amp, bf16: autocast then casts no weight at each call), fp32 (fp32)."""
        return torch.float16 if self.backbone_mode == "fp16" else self.autocast_dtype or torch.float32

    def cast_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A frozen tower (or CLIP model) in `frozen_dtype`: `backbones.to_half` under fp16,
        `backbones.to_compute_dtype` under amp / bf16 (matrices only; norms, embeddings and the
        residual stream stay fp32); unchanged under fp32. Trainable parts are never given here."""
        from .backbones import to_compute_dtype, to_half  # noqa: PLC0415  (backbones imports the clip packages)
        if self.backbone_mode == "fp16":
            return to_half(module)
        if self.autocast_dtype is not None:
            return to_compute_dtype(module, self.autocast_dtype)
        return module

    def autocast(self):
        """The context the towers run in (autocast in the mode's dtype, or a no-op)."""
        return torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)


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


def configure_matmul(device: torch.device | str, deterministic: bool) -> str | None:
    """fp32 matmuls and convolutions on a GPU: TF32 (10-bit mantissa inputs, fp32 accumulation;
    several times the fp32 rate on Ampere and later) unless the run must be deterministic, where
    they stay true fp32 so results follow the fp32 reference. Returns the matmul precision set
    ("high" or "highest"), or None off a GPU (CPU kernels are left as they are)."""
    if torch.device(device).type != "cuda":
        return None
    precision = "highest" if deterministic else "high"
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = not deterministic
    logger.info("fp32 matmuls / convolutions on the GPU: %s", "true fp32 (TRAIN.DETERMINISTIC True)" if deterministic
                else "TF32 (TRAIN.DETERMINISTIC False)")
    return precision
