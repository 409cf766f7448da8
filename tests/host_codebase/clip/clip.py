"""`clip.load` / `clip.tokenize` of the host: OpenAI's, except that the model needs `design_details`."""
import os

from ._openai import openai
from .design_model import as_host_clip, build_model  # noqa: F401

_upstream = openai.clip

__all__ = ["available_models", "load", "tokenize"]

_MODELS = _upstream._MODELS
available_models = _upstream.available_models
tokenize = _upstream.tokenize


def _download(url, root=None):
    return _upstream._download(url, root or os.path.expanduser("~/.cache/clip"))


def load(name, design_details, device="cpu", jit=False, download_root=None):
    if jit:
        raise ValueError("this host's CLIP loads as a module, not as a JIT archive (jit=False)")
    model, preprocess = _upstream.load(name, device=device, jit=False, download_root=download_root)
    return as_host_clip(model, design_details), preprocess
