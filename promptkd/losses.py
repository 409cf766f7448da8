"""Losses of PromptKD and of its PromptSRC teacher, and Gaussian prompt aggregation (GPA).

KL terms use the published scaling: the summed KL divided by the number of logits (B·C), not
`batchmean`, because the published KD_WEIGHT values (1000 / 200) were tuned for it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .precision import fp32_scoring


def kl_per_logit(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Σ KL(softmax(t/T) ‖ softmax(s/T)) / (B·C), computed in fp32 (outside autocast)."""
    with fp32_scoring(student_logits):
        s = F.log_softmax(student_logits.float() / temperature, dim=-1)
        t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        return F.kl_div(s, t, reduction="sum", log_target=True) / student_logits.numel()


def kd_loss(student_logits, teacher_logits, temperature: float, weight: float) -> torch.Tensor:
    """PromptKD's distillation loss: KD_WEIGHT × T² × KL(teacher ‖ student) / (B·C)."""
    return weight * temperature**2 * kl_per_logit(student_logits, teacher_logits, temperature)


#: The distillation objectives (TRAINER.PROMPTKD.LOSS): forward KL(teacher ‖ student), the
#: published one; reverse KL(student ‖ teacher) (mode-seeking); their sum (KDPL's symmetric KL).
#: All three keep the published reduction (sum / (B·C)) and KD_WEIGHT × T², so one KD_WEIGHT
#: means the same scale for each (KDPL's batchmean reduction is this × C).
DISTILL_LOSSES = ("kl", "reverse_kl", "sym_kl")
#: Names for tables and logs.
DISTILL_LOSS_LABELS = {"kl": "KL", "reverse_kl": "rev-KL", "sym_kl": "sym-KL"}


def distill_loss(student_logits, teacher_logits, kind: str, temperature: float, weight: float) -> torch.Tensor:
    """KD_WEIGHT × T² × the objective `kind` (DISTILL_LOSSES) per logit; `kl` is `kd_loss` itself."""
    if kind == "kl":
        return kd_loss(student_logits, teacher_logits, temperature, weight)
    # kl_per_logit(a, b) is KL(softmax(b) ‖ softmax(a)): the student in the second place is the reverse KL
    reverse = weight * temperature**2 * kl_per_logit(teacher_logits, student_logits, temperature)
    if kind == "reverse_kl":
        return reverse
    if kind == "sym_kl":
        return kd_loss(student_logits, teacher_logits, temperature, weight) + reverse
    raise ConfigError(f"TRAINER.PROMPTKD.LOSS '{kind}' is not one of {', '.join(DISTILL_LOSSES)}.")


#: Feature terms between the student's projected feature and the teacher's image embedding
#: (both L2-normalised): cosine, mean of 1 - cos; l1, mean absolute difference (PromptSRC's L1).
FEATURE_LOSSES = ("off", "cosine", "l1")


def feature_loss(student_features, teacher_features, kind: str, weight: float) -> torch.Tensor:
    """weight × the feature term `kind` (FEATURE_LOSSES) over the batch, in fp32."""
    with fp32_scoring(student_features):
        s = F.normalize(student_features.float(), dim=-1)
        t = F.normalize(teacher_features.float(), dim=-1)
        if kind == "cosine":
            return weight * (1.0 - (s * t).sum(dim=-1)).mean()
        if kind == "l1":
            return weight * F.l1_loss(s, t)
    raise ConfigError(f"TRAINER.PROMPTKD.FEATURE_LOSS '{kind}' is not one of {', '.join(FEATURE_LOSSES[1:])}.")


def topk_logits(student_logits, teacher_logits, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides' logits at the teacher's top `k` classes of each row: the class-agnostic
    objective (KDPL) distils the teacher's distribution over its k most likely vocabulary
    entries, renormalised, instead of over every class."""
    k = min(k, teacher_logits.shape[-1])
    top, index = teacher_logits.topk(k, dim=-1)
    return student_logits.gather(-1, index), top


def promptsrc_regularisers(text_feats, zs_text_feats, image_feats, zs_image_feats, logits, zs_logits,
                           text_weight: float, image_weight: float, kl_weight: float) -> dict:
    """PromptSRC's self-regularising terms; features are L2-normalised; a zero weight skips a term.

    text_weight × L1(prompted text, frozen template-ensemble text) + image_weight × L1(prompted
    image, frozen image) + kl_weight × KL(frozen logits ‖ prompted logits) / (B·C).
    """
    with fp32_scoring(logits):
        return _regularisers(text_feats, zs_text_feats, image_feats, zs_image_feats, logits, zs_logits,
                             text_weight, image_weight, kl_weight)


def _regularisers(text_feats, zs_text_feats, image_feats, zs_image_feats, logits, zs_logits,
                  text_weight, image_weight, kl_weight) -> dict:
    terms = {}
    if text_weight:
        terms["l1_text"] = text_weight * F.l1_loss(text_feats.float(), zs_text_feats.float())
    if image_weight:
        terms["l1_image"] = image_weight * F.l1_loss(image_feats.float(), zs_image_feats.float())
    if kl_weight:
        terms["kl"] = kl_weight * kl_per_logit(logits, zs_logits)
    return terms


def promptsrc_loss(logits, labels, text_feats, zs_text_feats, image_feats, zs_image_feats,
                   zs_logits, text_weight: float, image_weight: float, kl_weight: float) -> dict:
    """PromptSRC: CE + the regularisers above. Returns the terms and their sum under "loss"."""
    with fp32_scoring(logits):
        terms = {"ce": F.cross_entropy(logits.float(), labels)}
    terms.update(promptsrc_regularisers(text_feats, zs_text_feats, image_feats, zs_image_feats, logits,
                                        zs_logits, text_weight, image_weight, kl_weight))
    terms["loss"] = sum(terms.values())
    return terms


def gpa_weights(num_epochs: int, mean: float, std: float) -> list[float]:
    """w_e ∝ N(e; mean, std) for e = 1..num_epochs, normalised to sum 1 (log-space, no underflow)."""
    if std <= 0:
        raise ConfigError(f"GPA_STD must be > 0, got {std}.")
    logits = torch.tensor([-((e - mean) ** 2) / (2 * std**2) for e in range(1, num_epochs + 1)], dtype=torch.float64)
    return torch.softmax(logits, dim=0).tolist()


class GaussianPromptAggregator:
    """Running Σ_e w_e · θ_e over epochs for the learnable prompts (PromptSRC's GPA).

    `update(epoch, params)` after each epoch (1-based); `result()` gives the aggregate.
    Its state is plain tensors and numbers, so it resumes from a checkpoint exactly.
    """

    def __init__(self, num_epochs: int, mean: float, std: float):
        self.weights = gpa_weights(num_epochs, mean, std)
        self.sums: dict[str, torch.Tensor] = {}
        self.epochs_done = 0

    def update(self, epoch: int, params: dict[str, torch.Tensor]) -> None:
        w = self.weights[epoch - 1]
        for name, value in params.items():
            contribution = w * value.detach().to(torch.float32)
            # A resumed run's sums come from a checkpoint read onto the CPU: they follow the
            # parameters to their device here (once; afterwards they are already there).
            self.sums[name] = (self.sums[name].to(contribution.device) + contribution if name in self.sums
                               else contribution.clone())
        self.epochs_done = epoch

    def result(self) -> dict[str, torch.Tensor]:
        if self.epochs_done != len(self.weights):
            raise RuntimeError(f"GPA has seen {self.epochs_done} of {len(self.weights)} epochs.")
        return dict(self.sums)

    def state_dict(self) -> dict:
        return {"sums": {k: v.clone() for k, v in self.sums.items()}, "epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {k: v.clone() for k, v in state["sums"].items()}
        self.epochs_done = int(state["epochs_done"])


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def check_finite(loss: torch.Tensor, where: str, hint: str) -> None:
    """Raise at once on a non-finite loss (a host sync: the training loop uses `StepLog`)."""
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"Loss is {loss.item()} at {where}. {hint}")


#: Under a GradScaler (PREC amp): skipped steps not counted against TRAIN.MAX_SKIPPED_STEPS_SHARE,
#: and the most skipped steps in a row. GradScaler starts at a scale of 2^16 and halves it at
#: every skipped step, so its calibration skips at most ~16 steps; 24 skips in a row leave a
#: scale of 2^-8, where no fp16 overflow is left to blame: the loss itself is not finite.
CALIBRATION_SKIPS = 24


class StepLog:
    """The training loop's per-step values, kept on the device and read every `every` steps.

    A GPU step at a small batch is bound by kernel launches; every `.item()` / `if tensor:`
    waits for the GPU to finish the step (a host sync). The loop hands each step's loss terms
    (tensors) to `add` and each loss to `watch` instead; `read()` brings all of them to the host
    with one copy when `due()`, or at the end of an epoch, and raises `FloatingPointError`
    naming the first step whose loss was not finite (its parameters were updated by then; the
    last checkpoint on disk is the last good one). `host_reads` counts the copies.

    Under a GradScaler (PREC amp) a non-finite loss is not an error: fp16 overflow in an early
    step is how the scaler calibrates. `scaler_step(scale)` after `scaler.update()` counts the
    skipped steps (the scale went down) and raises only when more than `CALIBRATION_SKIPS` were
    skipped in a row, or more than `max_skipped_share` of the steps beyond the first
    `CALIBRATION_SKIPS` skipped ones.
    """

    def __init__(self, every: int = 1, max_skipped_share: float = 0.05, hint: str = ""):
        self.every, self.max_skipped_share, self.hint = max(1, int(every)), float(max_skipped_share), hint
        self.pending: list[tuple[int, dict]] = []
        self.watched: list[tuple[str, torch.Tensor]] = []
        self.host_reads = 0
        self.steps = self.skipped = self.in_a_row = 0
        self.last_scale: float | None = None

    def add(self, n_iter: int, summary: dict) -> None:
        """One step's values (tensors stay on their device; numbers are kept as given)."""
        self.pending.append((n_iter, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in summary.items()}))

    def watch(self, loss: torch.Tensor, where: str) -> None:
        """A loss that must be finite (checked at the next `read`)."""
        self.watched.append((where, loss.detach()))

    def due(self) -> bool:
        return len(self.pending) >= self.every or len(self.watched) >= self.every

    def read(self) -> list[tuple[int, dict]]:
        """[(n_iter, {name: float})] of the steps added since the last read (one host copy)."""
        tensors = [v for _, values in self.pending for v in values.values() if isinstance(v, torch.Tensor)]
        tensors += [loss for _, loss in self.watched]
        numbers = iter([])
        if tensors:
            device = tensors[0].device
            numbers = iter(torch.stack([t.float().reshape(-1)[0].to(device) for t in tensors]).tolist())
            self.host_reads += 1
        out = [(n_iter, {k: next(numbers) if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()})
               for n_iter, values in self.pending]
        watched = [(where, next(numbers)) for where, _ in self.watched]
        self.pending, self.watched = [], []
        for where, value in watched:
            if not math.isfinite(value):
                raise FloatingPointError(f"Loss is {value} at {where}. {self.hint}")
        return out

    def scaler_step(self, scale: float, where: str) -> bool:
        """Count one GradScaler step (`scale`: `scaler.get_scale()` after `update()`); returns
        whether it was skipped. Raises past the limits above."""
        skipped = self.last_scale is not None and scale < self.last_scale
        self.last_scale, self.steps = scale, self.steps + 1
        self.skipped += skipped
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        beyond = self.skipped - CALIBRATION_SKIPS
        if self.in_a_row > CALIBRATION_SKIPS or beyond > self.max_skipped_share * self.steps:
            why = (f"{self.in_a_row} steps in a row" if self.in_a_row > CALIBRATION_SKIPS else
                   f"{self.skipped} of {self.steps} steps (more than {self.max_skipped_share:.0%} beyond the first "
                   f"{CALIBRATION_SKIPS}, TRAIN.MAX_SKIPPED_STEPS_SHARE)")
            raise FloatingPointError(f"PREC amp: the gradient scaler skipped {why} because the loss or its gradients "
                                     f"were not finite, at {where} (scale now {scale:g}). {self.hint}")
        return skipped


