"""Helpers of the device tier (tests/gpu) and of tests/test_gpu_paths.py: trainers on a fake DTD
with tiny CLIPs, a PromptSRC method, a loss-and-gradients probe, and a counter of host reads.

(Test files do not import from each other; what they share lives here. The trainer arguments
are those of tests/test_trainers.py's kit: the shipped configs with tiny sizes.)
"""
from __future__ import annotations

import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CFG = os.path.join(ROOT, "configs/trainers/PromptKDTeacher/vit_l14_c2_ep20_batch8_4+4ctx.yaml")
STUDENT_CFG = os.path.join(ROOT, "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml")
DTD_CFG = os.path.join(ROOT, "configs/datasets/dtd.yaml")
TINY = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "16"]


def teacher_args(data_root, weights, out, *extra, epochs=2):
    return ["--root", data_root, "--seed", "1", "--trainer", "PromptKDTeacher", "--dataset-config-file", DTD_CFG,
            "--config-file", TEACHER_CFG, "--output-dir", out, "MODEL.BACKBONE.NAME", weights["teacher"], *TINY,
            "TRAINER.PROMPTSRC.PREC", "fp32", "OPTIM.MAX_EPOCH", str(epochs), "DATASET.NUM_SHOTS", "4",
            "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2",
            "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2", *extra]


def student_args(data_root, weights, out, teacher_dir, *extra, epochs=3):
    return ["--root", data_root, "--seed", "1", "--trainer", "PromptKD", "--dataset-config-file", DTD_CFG,
            "--config-file", STUDENT_CFG, "--output-dir", out, "MODEL.BACKBONE.NAME", weights["student"], *TINY,
            "TRAINER.PROMPTKD.PREC", "fp32", "OPTIM.MAX_EPOCH", str(epochs), "DATASET.NUM_SHOTS", "0",
            "TRAINER.PROMPTKD.TEACHER_DIR", teacher_dir, "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "2",
            "TRAINER.PROMPTKD.KD_WEIGHT", "100", *extra]


def make_trainer(args):
    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed

    from promptkd.trainers import train  # conftest.py registers the trainers and datasets

    cfg = train.setup_cfg(train.parse_args(args))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def promptsrc(clip_model, classnames=("red circle", "blue_square", "green triangle")):
    from promptkd.baselines import METHODS

    return METHODS["PromptSRC"](clip_model, list(classnames), n_ctx_text=2, depth_text=2, n_ctx_vision=2,
                                depth_vision=2, ctx_init="a photo")


def loss_and_grads(model, step):
    """(loss, {name: gradient}) of one `step()` from cleared gradients."""
    for p in model.parameters():
        p.grad = None
    loss = step()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


class HostReads:
    """Counts what would wait for a GPU if the tensor lived there: `.item()`, `bool()` /
    `float()` / `int()` of a tensor, `.tolist()`, `.cpu()` / `.numpy()`, while active (every
    tensor: run it around code whose tensors would all be on the device). `.to(device)` is not
    counted: on a CPU run it cannot be told from the copies to the run's device.

    On a CPU every tensor is on the host, so the count is what the code asks for, not what it
    costs here; on a GPU each of these is a host sync."""

    NAMES = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"}

    def __init__(self):
        self.calls: list[str] = []

    def __enter__(self):
        from torch.overrides import TorchFunctionMode

        calls = self.calls

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in HostReads.NAMES:
                    calls.append(name)
                return func(*args, **(kwargs or {}))

        self.mode = _Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)
