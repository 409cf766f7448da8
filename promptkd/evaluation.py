"""Accuracy reports: base / novel / HM from one pass over all test images.

Base-to-novel: base images (label < m) are scored against the base class vectors V[:m] only,
novel images against V[m:] only, exactly as separate base and novel test runs would.

What the report needs of an image is three class indices (`predictions`: the argmax over all
classes, over the base block, over the novel block), so evaluation keeps those per image,
not its logits: under torchrun each rank sends [n, 3] integers, not [n, C] floats.
"""
from __future__ import annotations

import math

import torch

from .losses import harmonic_mean
from .precision import fp32_scoring


def num_base_classes(num_classes: int) -> int:
    return math.ceil(num_classes / 2)


def predictions(logits: torch.Tensor, num_base: int | None = None) -> torch.Tensor:
    """[B, 3] int64 per image: argmax over all classes, over the base classes [0, m), and over
    the novel classes [m, C) (as a label; -1 when there are none). In fp32, outside autocast."""
    with fp32_scoring(logits):
        logits = logits.float()
        m = num_base if num_base is not None else num_base_classes(logits.shape[1])
        novel = logits[:, m:].argmax(1) + m if logits.shape[1] > m else torch.full_like(logits[:, 0], -1, dtype=torch.long)
        return torch.stack([logits.argmax(1), logits[:, :m].argmax(1), novel], dim=1)


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor, protocol: str, num_base: int | None = None) -> dict:
    """{"accuracy": %, and for base2novel "base", "novel", "hm"} from logits over all classes."""
    m = num_base if num_base is not None else num_base_classes(logits.shape[1])
    return report_from_predictions(predictions(logits, m), labels, protocol, m)


def report_from_predictions(preds: torch.Tensor, labels: torch.Tensor, protocol: str, num_base: int) -> dict:
    """`accuracy_report` from the [N, 3] `predictions` of the images and their labels."""
    preds, labels = preds.cpu(), labels.cpu()
    report = {"accuracy": 100.0 * (preds[:, 0] == labels).float().mean().item(), "n": len(labels)}
    if protocol == "base2novel":
        m = num_base
        base, novel = labels < m, labels >= m
        base_acc = (preds[base, 1] == labels[base]).float().mean().item() if base.any() else float("nan")
        novel_acc = (preds[novel, 2] == labels[novel]).float().mean().item() if novel.any() else float("nan")
        report.update(base=100.0 * base_acc, novel=100.0 * novel_acc,
                      hm=harmonic_mean(100.0 * base_acc, 100.0 * novel_acc))
    return report
