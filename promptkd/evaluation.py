"""Accuracy reports: base / novel / HM from one pass over all test images.

Base-to-novel: base images (label < m) are scored against the base class vectors V[:m] only,
novel images against V[m:] only, exactly as separate base and novel test runs would.
"""
from __future__ import annotations

import math

import torch

from .losses import harmonic_mean


def num_base_classes(num_classes: int) -> int:
    return math.ceil(num_classes / 2)


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor, protocol: str, num_base: int | None = None) -> dict:
    """{"accuracy": %, and for base2novel "base", "novel", "hm"} from logits over all classes."""
    logits, labels = logits.float().cpu(), labels.cpu()
    report = {"accuracy": 100.0 * (logits.argmax(1) == labels).float().mean().item(), "n": len(labels)}
    if protocol == "base2novel":
        m = num_base if num_base is not None else num_base_classes(logits.shape[1])
        base, novel = labels < m, labels >= m
        base_acc = (logits[base][:, :m].argmax(1) == labels[base]).float().mean().item() if base.any() else float("nan")
        novel_acc = ((logits[novel][:, m:].argmax(1) + m) == labels[novel]).float().mean().item() if novel.any() else float("nan")
        report.update(base=100.0 * base_acc, novel=100.0 * novel_acc,
                      hm=harmonic_mean(100.0 * base_acc, 100.0 * novel_acc))
    return report
