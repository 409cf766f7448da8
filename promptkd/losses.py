"""Losses of PromptKD and of its PromptSRC teacher, and Gaussian prompt aggregation (GPA).

KL terms use the published scaling: the summed KL divided by the number of logits (B·C), not
`batchmean`, because the published KD_WEIGHT values (1000 / 200) were tuned for it.
"""
from __future__ import annotations


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
            self.sums[name] = self.sums[name] + contribution if name in self.sums else contribution.clone()
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
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"Loss is {loss.item()} at {where}. {hint}")


