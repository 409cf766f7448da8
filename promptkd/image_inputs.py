"""Re-fit a batch prepared for one tower to another tower's input size and normalisation.

Dassl's data pipeline prepares each image once, for the student (INPUT.SIZE / PIXEL_MEAN /
PIXEL_STD). A teacher that wants another size or normalisation (a 378 px DFN ViT-H/14 with a
224 px student, or mean / std 0.5) gets the *same* augmented view through `TowerInput`: undo
the student's normalisation, resize on the device with the teacher's interpolation, apply the
teacher's normalisation. When both towers agree it returns its input unchanged (exactly).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Preprocess

_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


class TowerInput(nn.Module):
    def __init__(self, source: Preprocess, target: Preprocess):
        super().__init__()
        if target.interpolation not in _MODES:
            raise ValueError(f"Unknown interpolation '{target.interpolation}'; use one of {sorted(_MODES)}.")
        self.size = tuple(target.size)
        self.resize = tuple(source.size) != self.size
        self.mode = _MODES[target.interpolation]
        self.renormalise = (source.mean, source.std) != (target.mean, target.std)
        self.identity = not (self.resize or self.renormalise)
        # (x * s_std + s_mean - t_mean) / t_std = x * scale + shift, per channel
        scale = torch.tensor(source.std) / torch.tensor(target.std)
        shift = (torch.tensor(source.mean) - torch.tensor(target.mean)) / torch.tensor(target.std)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return "identity" if self.identity else f"size={self.size}, mode={self.mode}, renormalise={self.renormalise}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return images
        x = images
        if self.renormalise:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if self.resize:
            kwargs = {} if self.mode == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=self.size, mode=self.mode, **kwargs)
        return x
