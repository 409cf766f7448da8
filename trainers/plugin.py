"""PromptKD inside a host codebase (CoOp, the PromptSRC / MaPLe codebase, their forks): the entry.

Two lines in the host's `train.py` add PromptKDTeacher and PromptKD (docs/plugin.md):

    import promptkd.trainers.plugin as promptkd_plugin    # after the host's own imports
    promptkd_plugin.extend_cfg(cfg)                        # the last line of the host's extend_cfg

`extend_cfg(cfg)` does two things, and importing this module does neither:

* registers our trainers and dataset loaders in Dassl's registries where their names are free.
  The host's names win: its loaders serve the datasets it has (ours fill ImageFolder, ToyShapes),
  and a baseline of ours whose name the host holds (CoOp, ...) registers as `PKD.<name>`;
* adds the config keys our trainers read where the host's config lacks them. A key the host
  already has keeps its value and type; one it defines in a way ours cannot use (a group where
  we need a value, a string where we need a number) is a ConfigError naming it.

`fix_dassl_warmup_scheduler()` is a separate, explicit call for the host's own trainers on
current torch (see its docstring). Our own `train.py` calls `register()` the same way.
"""
from __future__ import annotations

import logging

from yacs.config import CfgNode as CN

from promptkd.errors import ConfigError

logger = logging.getLogger("promptkd")

#: The prefix of a trainer of ours whose name a host already registered (CoOp -> PKD.CoOp).
PREFIX = "PKD."


def trainer_classes() -> tuple:
    """Every trainer this plugin provides, in registration order."""
    from promptkd.trainers import baseline_trainers  # noqa: PLC0415  (Dassl trainers: only when asked for)
    from promptkd.trainers.promptkd import PromptKD  # noqa: PLC0415
    from promptkd.trainers.promptkd_teacher import PromptKDTeacher  # noqa: PLC0415
    b = baseline_trainers
    return (PromptKDTeacher, PromptKD, b.ZeroshotCLIP, b.CoOp, b.CoCoOp, b.IVLP, b.MaPLe, b.PromptSRC)


def register() -> dict:
    """Register our trainers and dataset loaders in Dassl's registries where their names are free.

    Returns {"trainers": {our class name: the name it is registered under}, "datasets":
    {name: "promptkd" | "host"}}. Idempotent: a second call registers nothing more."""
    from dassl.engine import TRAINER_REGISTRY  # noqa: PLC0415

    from promptkd import datasets  # noqa: PLC0415

    names = TRAINER_REGISTRY.registered_names()
    registered = {}
    for cls in trainer_classes():
        name = cls.__name__
        for candidate in (name, PREFIX + name):
            held = TRAINER_REGISTRY.get(candidate) if candidate in names else None
            if held is cls:
                break
            if held is None:
                # Dassl's Registry registers an object under its own __name__ only; the prefixed
                # name goes through the method that does the work for it.
                TRAINER_REGISTRY._do_register(candidate, cls)  # noqa: SLF001
                if candidate != name:
                    logger.info("Trainer %s is the host's; ours is registered as %s.", name, candidate)
                break
        else:
            raise ConfigError(f"Dassl's TRAINER_REGISTRY already holds other trainers under both '{name}' and "
                              f"'{PREFIX}{name}': PromptKD's {name} cannot be registered. Rename one of them.")
        registered[name] = candidate
    return {"trainers": registered, "datasets": datasets.register()}


def our_keys() -> CN:
    """Dassl's default config with every key this plugin adds (what our own train.py starts from)."""
    from dassl.config import get_cfg_default  # noqa: PLC0415

    from promptkd.trainers.config import extend_cfg as extend_ours  # noqa: PLC0415
    return extend_ours(get_cfg_default())


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compatible(host, ours) -> bool:
    """Whether our code can read the host's value of a key where it expects one like `ours`."""
    if isinstance(host, CN) or isinstance(ours, CN):
        return isinstance(host, CN) and isinstance(ours, CN)
    if _number(host) and _number(ours):
        return True  # an int where we keep a float (PromptSRC's TEXT_LOSS_WEIGHT 25): read as a number
    if isinstance(host, (list, tuple)) and isinstance(ours, (list, tuple)):
        return True
    return type(host) is type(ours)


def merge_missing(cfg: CN, ours: CN, prefix: str = "") -> list[str]:
    """Add to `cfg` every key of `ours` it lacks (groups whole); return the keys added. A key both
    have keeps the host's value and type; an incompatible one is a ConfigError naming it."""
    added = []
    for key, value in ours.items():
        full = prefix + key
        if key not in cfg:
            cfg[key] = value.clone() if isinstance(value, CN) else value
            added.append(full)
        elif not _compatible(cfg[key], value):
            raise ConfigError(
                f"The host's config defines {full} as {_kind(cfg[key])} ({cfg[key]!r}), but PromptKD reads it as "
                f"{_kind(value)} (default {value!r}). Rename the host's key, or make it {_kind(value)}.")
        elif isinstance(value, CN):
            added += merge_missing(cfg[key], value, full + ".")
    return added


def _kind(value) -> str:
    if isinstance(value, CN):
        return "a group of keys"
    return {"str": "a string", "int": "a number", "float": "a number", "bool": "a boolean",
            "list": "a list", "tuple": "a list"}.get(type(value).__name__, type(value).__name__)


def extend_cfg(cfg: CN) -> CN:
    """The host's `extend_cfg` calls this last: our trainers and loaders are registered where
    their names are free, and our config keys are added where the host's config lacks them."""
    done = register()
    taken = [n for n, how in done["datasets"].items() if how == "host"]
    if taken:
        logger.debug("Datasets served by the host's loaders: %s.", ", ".join(taken))
    added = merge_missing(cfg, our_keys())
    logger.debug("PromptKD added %d config keys the host lacks.", len(added))
    return cfg


def fix_dassl_warmup_scheduler() -> bool:
    """Opt-in: let Dassl's warm-up LR schedulers run on torch releases whose LRScheduler no
    longer takes `verbose` (torch >= 2.7 or so: Dassl's `_BaseWarmupScheduler` passes it, and
    every host trainer with OPTIM.WARMUP_EPOCH > 0 stops with `TypeError: LRScheduler.__init__()
    takes from 2 to 3 positional arguments but 4 were given`).

    The fix replaces `dassl.optim.lr_scheduler._BaseWarmupScheduler.__init__` with one that does
    the same without passing `verbose` on. Returns True if it patched, False where this torch
    still takes `verbose` (nothing to fix). Our own trainers do not need it
    (`promptkd.schedule`); call it in the host's train.py only for the host's trainers."""
    import inspect  # noqa: PLC0415

    from dassl.optim import lr_scheduler  # noqa: PLC0415
    from torch.optim.lr_scheduler import LRScheduler  # noqa: PLC0415

    base = getattr(lr_scheduler, "_BaseWarmupScheduler", None)
    if base is None:
        raise ConfigError("fix_dassl_warmup_scheduler: this Dassl has no dassl.optim.lr_scheduler."
                          "_BaseWarmupScheduler; it needs no fix from PromptKD (or a newer one).")
    if getattr(base.__init__, "_promptkd_fixed", False):
        return True
    if "verbose" in inspect.signature(LRScheduler.__init__).parameters:
        return False

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1, verbose=False):  # noqa: N807
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        LRScheduler.__init__(self, optimizer, last_epoch)

    __init__._promptkd_fixed = True
    base.__init__ = __init__
    logger.info("Dassl's warm-up LR schedulers patched for this torch (no `verbose` argument): "
                "promptkd.trainers.plugin.fix_dassl_warmup_scheduler().")
    return True
