"""A host codebase's own trainers as PromptKD students (docs/plugin.md).

In a CoOp-family checkout (CoOp, the PromptSRC / MaPLe codebase, a user's fork) a Dassl trainer
builds `self.model`, whose `forward(image, label=None)` returns the training loss while it is in
training mode and the class logits otherwise (CoOp returns logits always). Such a trainer is a
student with `TRAINER.PROMPTKD.STUDENT <its registered name>` and no change to its code:

* its model is built by its own `check_cfg` + `build_model`, on the teacher's classes in the
  teacher's order (its own prompts, frozen towers and precision; what it makes trainable trains);
* each step calls the model in eval mode, with autograd, for logits over those classes; our
  PromptKD trainer adds the objective (docs/students.md), the optimiser and the LR schedule of
  OPTIM, checkpoints, resume and the base / novel / HM evaluation.

What it loses: whatever lives only in its training branch (PromptSRC's self-regularising L1 / KL
terms and GPA, any loss its `forward` computes from labels), and its class vectors are not
exported (its text side is its own code).
"""
from __future__ import annotations

import contextlib
import logging
import types

import torch
from dassl.engine.trainer import TrainerBase, TrainerX
from torch import nn

from promptkd.errors import ConfigError

logger = logging.getLogger("promptkd")


def is_host_trainer(cls) -> bool:
    """A Dassl trainer of the host's (not ours, not one of Dassl's own): a possible student."""
    from promptkd.trainers.base import PromptTrainer  # noqa: PLC0415

    module = getattr(cls, "__module__", "")
    return (isinstance(cls, type) and issubclass(cls, TrainerX) and not issubclass(cls, PromptTrainer)
            and not module.startswith(("dassl.", "promptkd.")))


def build_host_model(cls, cfg, classnames: list[str], device: torch.device) -> nn.Module:
    """The host trainer's model on `classnames`, as its own `build_model` makes it, without its
    data manager: the trainer object gets only what Dassl sets before `build_model` runs."""
    model = getattr(build_host_trainer(cls, cfg, classnames, device), "model", None)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"The host's trainer {cls.__name__} built no `self.model` (an nn.Module): it cannot be a "
                          "student.")
    return model.module if isinstance(model, nn.DataParallel) else model


def build_host_trainer(cls, cfg, classnames: list[str], device: torch.device):
    """The host trainer object after its own `check_cfg` + `build_model` on `classnames` (its
    `model`, its registered models for `load_model`), without its data manager."""
    builder = cls.__new__(cls)
    TrainerBase.__init__(builder)  # its model / optimiser / scheduler registers
    builder.cfg, builder.device, builder.output_dir = cfg, device, cfg.OUTPUT_DIR
    builder.start_epoch = builder.epoch = 0
    builder.max_epoch = cfg.OPTIM.MAX_EPOCH
    lab2cname = dict(enumerate(classnames))
    builder.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(classnames), lab2cname=lab2cname),
                                       num_classes=len(classnames), lab2cname=lab2cname)
    builder.num_classes, builder.lab2cname = len(classnames), lab2cname
    name = cls.__name__
    try:
        cls.check_cfg(builder, cfg)
        cls.build_model(builder)
    except TypeError as err:
        if "positional arguments" in str(err) and "__init__" in str(err):
            raise ConfigError(
                f"The host's {name}.build_model failed building Dassl's warm-up LR scheduler on this torch ({err}). "
                "Call promptkd_plugin.fix_dassl_warmup_scheduler() in the host's train.py (docs/plugin.md), or set "
                "OPTIM.WARMUP_EPOCH 0.") from None
        raise
    return builder


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Every submodule in eval mode (the logits branch), restored afterwards; autograd stays on."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class HostStudent(nn.Module):
    """The host trainer's model behind the interface PromptKD's method students have."""

    image_conditioned = False
    host_trainer = True

    def __init__(self, model: nn.Module, classnames: list[str], trainer_name: str):
        super().__init__()
        self.host = model
        self.classnames = list(classnames)
        self.trainer_name = trainer_name
        self.settings = {"host_trainer": trainer_name}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.host):
            out = self.host(images)
        if not torch.is_tensor(out) or out.dim() != 2 or out.shape != (images.shape[0], len(self.classnames)):
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ConfigError(
                f"The host's {self.trainer_name} model returned {got} in eval mode, not logits "
                f"[{images.shape[0]}, {len(self.classnames)}] over the teacher's classes: a student's model must "
                "return class logits for images outside training (docs/plugin.md).")
        return out.float()

    def forward(self, images: torch.Tensor) -> dict:
        return {"logits": self.logits(images)}

    def extra_losses(self, out: dict, labels) -> dict:
        return {}

    def set_grad_checkpoint(self, text: bool, image: bool) -> dict:
        if text or image:
            raise ConfigError(f"TRAINER.PROMPTKD.GRAD_CHECKPOINT: the host's {self.trainer_name} runs its own "
                              "encoders, which PromptKD cannot checkpoint: set it off.")
        return {"text": False, "image": False}

    def prepare_eval(self, classnames: list[str]) -> None:
        if list(classnames) != self.classnames:
            raise ConfigError(f"The host's {self.trainer_name} student was built on the teacher's {len(self.classnames)} "
                              f"classes and cannot be evaluated on {len(classnames)} others.")

    def eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)


def build_host_student(cls, cfg, classnames: list[str], device: torch.device) -> HostStudent:
    """The host trainer `cls` as a student on `classnames` (the teacher's, in its order)."""
    model = build_host_model(cls, cfg, classnames, device)
    n_cls = getattr(getattr(model, "prompt_learner", None), "n_cls", None)
    if n_cls is not None and n_cls != len(classnames):
        raise ConfigError(f"The host's {cls.__name__} built prompts for {n_cls} classes, not the teacher's "
                          f"{len(classnames)}.")
    student = HostStudent(model, classnames, cls.__name__)
    if not any(p.requires_grad for p in student.parameters()):
        raise ConfigError(f"TRAINER.PROMPTKD.STUDENT {cls.__name__}: the host's model has nothing to learn.")
    logger.info("Student: the host's trainer %s (%s.%s), its model built by its own build_model on the "
                "teacher's %d classes, scored by its own forward in eval mode; terms of its training branch are "
                "not used.", cls.__name__, cls.__module__, cls.__qualname__, len(classnames))
    return student
