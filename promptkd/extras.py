"""The optional parts of the project (pyproject.toml's extras) and the torch features some need.

The core dependencies are what training, evaluation, prediction and the TorchScript export
need. Every other part imports its packages through `require`, so a missing package is one
error that names the extra to install:

    export    onnx, onnxscript, onnxruntime   `promptkd export --format onnx`
    shards    webdataset                      unlabelled pools of .tar shards
    plots     matplotlib                      `promptkd results --plot`, the demo's plot
    tracking  wandb                           LOG.WANDB
    hub       safetensors, huggingface_hub    model folders, `--format hf`, push, convert

A feature that needs a newer torch than the oldest one supported asks `require_torch`, which
refuses on an older torch with the version it needs (instead of an AttributeError or a
TypeError deep inside torch).
"""
from __future__ import annotations

import importlib
import re
from types import ModuleType

from .errors import UserError

DISTRIBUTION = "promptkd-dassl"
#: extra -> the modules it provides (pyproject.toml's [project.optional-dependencies] installs them)
EXTRAS = {
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "shards": ("webdataset",),
    "plots": ("matplotlib",),
    "tracking": ("wandb",),
    "hub": ("safetensors", "huggingface_hub"),
}


class MissingExtraError(UserError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


class TorchTooOldError(UserError, RuntimeError):
    """A feature needs a newer torch than the one installed."""


def install_hint(extra: str) -> str:
    """The pip line that installs an extra (from PyPI-style wheels or from a clone)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra '{extra}'; known: {', '.join(EXTRAS)}")
    return f'pip install "{DISTRIBUTION}[{extra}]" (in a clone of the repository: pip install -e ".[{extra}]")'


def require(module: str, extra: str, what: str, alternative: str = "") -> ModuleType:
    """`import module`, or a MissingExtraError saying that `what` needs the extra `extra`.

    `alternative` is appended to the message (", or use --format torchscript")."""
    hint = install_hint(extra)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{what} needs the optional package {module.split('.')[0]}, which cannot be "
                                f"imported ({err}). Install the '{extra}' extra: {hint}{alternative}.") from err


def version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string such as '2.11.0+cu130' or '2.6.0a0'."""
    parts = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if parts is None:
        raise ValueError(f"not a version: '{version}'")
    return tuple(int(p or 0) for p in parts.groups())


def torch_at_least(version: str) -> bool:
    import torch

    return version_tuple(torch.__version__) >= version_tuple(version)


def require_torch(version: str, what: str, alternative: str = "") -> None:
    """Refuse `what` on a torch older than `version`, naming both versions."""
    import torch

    if not torch_at_least(version):
        raise TorchTooOldError(f"{what} needs torch >= {version}; this environment has torch {torch.__version__}. "
                               f"Upgrade torch (pip install 'torch>={version}', the build for your CUDA){alternative}.")
