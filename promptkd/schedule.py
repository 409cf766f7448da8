"""The CoOp-lineage LR schedule (warm-up epochs, then cosine) from torch's own LambdaLR.

Dassl's warm-up wrapper does not serve: it passes the `verbose` argument that current torch's
LRScheduler no longer takes (every config with WARMUP_EPOCH 1 dies building it), it pickles the
scheduler it wraps (which `torch.load(weights_only=True)` refuses), and after a resume it
freezes the LR (the restored successor steps a copy of the optimizer). A LambdaLR's state is
plain numbers, so checkpoints load with weights_only=True and a resumed run continues on the
same curve. The schedule steps once per epoch, like Dassl's.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .errors import ConfigError

SCHEDULERS = ("cosine", "constant")
WARMUPS = ("constant", "linear")


def build_lr_scheduler(optimizer: Optimizer, name: str, max_epoch: int, warmup_epoch: int = 0,
                       warmup_type: str = "constant", warmup_cons_lr: float = 1e-5,
                       warmup_min_lr: float = 1e-5) -> LambdaLR:
    """Epoch e < warmup_epoch: constant `warmup_cons_lr` (or linear from `warmup_min_lr`);
    after that the cosine value of epoch e over max_epoch (as Dassl's ConstantWarmupScheduler
    over CosineAnnealingLR does), or the base LR for `constant`."""
    if name not in SCHEDULERS:
        raise ConfigError(f"OPTIM.LR_SCHEDULER '{name}' is not supported; use one of {SCHEDULERS}.")
    if warmup_epoch > 0 and warmup_type not in WARMUPS:
        raise ConfigError(f"OPTIM.WARMUP_TYPE '{warmup_type}' is not supported; use one of {WARMUPS}.")
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    def factor(group: int):
        base = base_lrs[group]

        def f(epoch: int) -> float:
            if epoch < warmup_epoch:
                if warmup_type == "constant":
                    return warmup_cons_lr / base
                return warmup_min_lr / base if epoch == 0 else epoch / warmup_epoch
            if name == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(epoch, max_epoch) / max(1, max_epoch)))

        return f

    return LambdaLR(optimizer, [factor(i) for i in range(len(base_lrs))])
