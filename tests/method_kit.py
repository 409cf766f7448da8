"""Helpers of the prompt-method tests (test_baselines.py, test_grad_checkpoint.py): each
registered method (promptkd.baselines.METHODS) built on a tiny CLIP with small prompts, and
seeded images at the model's input size.
"""
import torch

from promptkd.baselines import METHODS

BASE = ["red circle", "blue_square", "green triangle"]


def build(name, clip_model, classnames=BASE):
    kwargs = {"IVLP": dict(n_ctx_text=2, depth_text=2, n_ctx_vision=2, depth_vision=2, ctx_init="a photo",
                           regularise=False),
              "PromptSRC": dict(n_ctx_text=2, depth_text=2, n_ctx_vision=2, depth_vision=2, ctx_init="a photo"),
              "CoOp": dict(n_ctx=4, ctx_init=""), "CoCoOp": dict(n_ctx=2, ctx_init="a photo"),
              "MaPLe": dict(n_ctx=2, depth=2, ctx_init="a photo of a"), "ZeroshotCLIP": {}}[name]
    return METHODS[name](clip_model, classnames, **kwargs)


def images(model, n=6, seed=0):
    r = model.visual.input_resolution
    return torch.randn(n, 3, r, r, generator=torch.Generator().manual_seed(seed))
