"""PromptKD's students: the paper's (`promptkd`) or any registered prompt-learning method.

TRAINER.PROMPTKD.STUDENT names the student. `promptkd` is the paper's: a prompted image tower
and a projector, scored on the teacher's stored class vectors (promptkd.student). Any other
value is the Dassl trainer name of a prompt-learning method (a `PromptLearningTrainer`: CoOp,
CoCoOp, IVLP, MaPLe, PromptSRC, and every method added as docs/NEW_METHOD.md says). Such a
student is built by that trainer's own `build_method`, from its own config node
(TRAINER.COOP.*, TRAINER.MAPLE.*, ...), keeps its prompts and text tower, and is scored on its
own text features of the teacher's classes, in the teacher's order. Nothing here is specific
to a method, so a newly registered one is a student with no further code.
"""
from __future__ import annotations

import logging

from dassl.engine import TRAINER_REGISTRY

from promptkd.errors import ConfigError
from promptkd.trainers.host_methods import build_host_student, is_host_trainer
from promptkd.trainers.prompt_learning import PromptLearningTrainer

logger = logging.getLogger("promptkd")

PAPER_STUDENT = "promptkd"


def method_students() -> list[str]:
    """The trainer names that can be a student: every registered prompt-learning method, ours
    and a host codebase's (trainers/host_methods.py)."""
    return sorted(n for n in TRAINER_REGISTRY.registered_names() if isinstance(TRAINER_REGISTRY.get(n), type)
                  and (issubclass(TRAINER_REGISTRY.get(n), PromptLearningTrainer)
                       or is_host_trainer(TRAINER_REGISTRY.get(n))))


def student_trainer(name: str) -> type:
    """The trainer class of a method student (case-insensitive), or a clear error."""
    by_lower = {n.lower(): n for n in method_students()}
    if name.lower() not in by_lower:
        raise ConfigError(f"TRAINER.PROMPTKD.STUDENT '{name}' is neither '{PAPER_STUDENT}' nor a registered "
                          f"prompt-learning method; use one of: {', '.join([PAPER_STUDENT] + method_students())}.")
    return TRAINER_REGISTRY.get(by_lower[name.lower()])


def build_method_student(name: str, cfg, clip_model, classnames: list[str], regularisers: bool, device=None):
    """The method `name` on `clip_model` for `classnames`, exactly as its own trainer builds it
    (its `build_method` reads `tcfg`, its TRAINER.<CFG_NODE>, and `cfg`), without building that
    trainer (no second Dassl data manager): an instance of the trainer class with only those two
    attributes set."""
    cls = student_trainer(name)
    if is_host_trainer(cls):  # a host codebase's trainer: its own build_model makes the model
        return build_host_student(cls, cfg, classnames, device), cls
    builder = cls.__new__(cls)  # not __init__: that would build Dassl's data and a model
    builder.cfg = cfg
    method = cls.build_method(builder, clip_model, classnames)
    if not any(p.requires_grad for p in method.parameters()):
        raise ConfigError(f"TRAINER.PROMPTKD.STUDENT {cls.__name__} has nothing to learn (no prompts): choose a "
                          "method with prompts, or evaluate it as it is with --trainer " + cls.__name__ + ".")
    if method.image_conditioned:
        logger.info("Student %s: its text depends on the image, so its class prompts are encoded per image "
                    "(its natural cost).", cls.__name__)
    if hasattr(method, "regularise"):
        method.regularise = bool(method.regularise and regularisers)
    return method, cls


def regulariser_note(method) -> str:
    if getattr(method, "host_trainer", False):
        return "the terms of its own training branch not used"
    if not hasattr(method, "regularise"):
        return "has no regularisers of its own"
    return "its own regularisers on" if method.regularise else "its own regularisers off"
