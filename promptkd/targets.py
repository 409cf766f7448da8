"""Where a student's targets come from: one interface for every teacher source.

A PromptKD step needs, for its batch of views, the teacher's logits over the teacher's stored
class vectors (and, for FEATURE_LOSS, its image embeddings). They come from one of:

* `LiveTeacher`: the frozen teacher image tower (or a host run's scorer) embeds the images;
* `CachedTeacher`: the teacher cache is read (`teacher_cache.TeacherCache.lookup`); a top-k
  cache gives the logits directly and no embeddings;
* `FillingTeacher`: the live tower embeds the images and the embeddings are stored (an online
  run filling the cache); with a view bank only the views not stored yet are embedded, the
  others are read back;
* `Ensemble`: several teachers of the same classes, their probabilities mixed per image.

Every source is called the same way, `source(views) -> Targets`, and told when an epoch ends
(`source.end_epoch(epoch)`), so a trainer never asks where its targets come from. Logits are
fp32 and computed outside autocast (`promptkd.precision`), the same numbers as before this
module: `student.teacher_logits` of the same embeddings.

Ensembles (`Ensemble`, `mix_probabilities`) combine in probability space at the objective's
temperature T and return T · log(mixed probabilities) as logits, so softmax(logits / T) is
exactly the mixture and the KL objective is unchanged. Rules:

* ``mean_prob``: q = (1/M) Σ_m p_m;
* ``weights``: q = Σ_m w_m p_m with fixed weights (normalised to sum 1);
* ``confidence``: per image, w_m(x) = softmax_m(c_m(x) / τ) with c_m(x) the teacher's
  confidence in that image, its maximum probability (``max_prob``) or its negative entropy
  divided by log C (``entropy``, in [-1, 0]): the per-image confidence weighting of a trained
  and a zero-shot teacher that The Professor (arXiv 2606.23897) describes, as we read it.

An ensemble of one teacher is that teacher (`build_ensemble` returns it unchanged), so its
targets are exactly the single teacher's.

Class-agnostic distillation picks vocabulary names per image or per batch
(`select_vocabulary`; KDPL's batch-level selection).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import ConfigError
from .precision import fp32_scoring
from .student import teacher_logits

#: TRAINER.PROMPTKD.ENSEMBLE_RULE
ENSEMBLE_RULES = ("mean_prob", "weights", "confidence")
#: TRAINER.PROMPTKD.ENSEMBLE_CONFIDENCE: how the confidence rule measures a teacher's confidence
CONFIDENCE_MEASURES = ("max_prob", "entropy")
#: TRAINER.PROMPTKD.TOPK_MODE: class-agnostic top-K names per image (today's) or per batch (KDPL)
TOPK_MODES = ("image", "batch")


@dataclass
class Views:
    """A batch of training views: the images (the student's preprocessing, on the run's device;
    None where no source needs them), the images' indices in the pool, each view's cache slot
    (its epoch, or its number in a view bank) and each view's epoch."""
    images: torch.Tensor | None
    indices: torch.Tensor
    slots: torch.Tensor
    epochs: torch.Tensor

    @classmethod
    def of_batch(cls, batch: dict, images: torch.Tensor | None) -> "Views":
        return cls(images, torch.as_tensor(batch["index"]), torch.as_tensor(batch["view"]),
                   torch.as_tensor(batch["epoch"]))


@dataclass
class Targets:
    """The teacher's logits [B, C] (fp32) over its class vectors, and its normalised image
    embeddings [B, D] where the source has them (None: a top-k cache, an ensemble)."""
    logits: torch.Tensor
    embeddings: torch.Tensor | None = None


class TeacherTargets:
    """A source of one teacher's targets (or of an ensemble's). `vectors`: the class vectors the
    logits are over ([C, D], fp32 on the run's device), `scale`: the teacher's log logit scale."""

    #: whether Targets.embeddings is set (FEATURE_LOSS, class-agnostic distillation need it)
    gives_embeddings = True
    #: what run.json and the logs call this source
    kind = "teacher"

    def __init__(self, vectors: torch.Tensor, scale: torch.Tensor, name: str = "teacher"):
        self.vectors, self.scale, self.name = vectors, scale, name

    def __call__(self, views: Views) -> Targets:
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> None:
        """Called once per epoch after its last step (a filling source completes the epoch's views)."""

    def scored(self, embeddings: torch.Tensor) -> Targets:
        return Targets(teacher_logits(embeddings, self.scale, self.vectors), embeddings)

    @property
    def members(self) -> list["TeacherTargets"]:
        return [self]


class LiveTeacher(TeacherTargets):
    """The teacher's image side runs on every batch: `tower.embed(images)` (a
    `student.TeacherImageScorer`, or a host run's scorer), normalised embeddings."""
    kind = "live"

    def __init__(self, tower, vectors, scale, name: str = "teacher"):
        super().__init__(vectors, scale, name)
        self.tower = tower

    def __call__(self, views: Views) -> Targets:
        return self.scored(self.tower.embed(views.images))


class CachedTeacher(TeacherTargets):
    """The teacher's embeddings (or, for a top-k cache, its logits) of each view, read from the
    cache by (slot, image); the teacher tower is never built."""
    kind = "cache"

    def __init__(self, cache, vectors, scale, device, name: str = "teacher"):
        super().__init__(vectors, scale, name)
        self.cache, self.device = cache, device
        self.gives_embeddings = not cache.gives_logits

    def __call__(self, views: Views) -> Targets:
        stored = self.cache.lookup(views.slots, views.indices).to(self.device, non_blocking=True)
        return Targets(stored) if self.cache.gives_logits else self.scored(stored)


class FillingTeacher(LiveTeacher):
    """An online run filling the cache: the tower embeds the batch and `store(slots, indices,
    embeddings)` keeps them (the trainer's, which gathers them under DDP). With a view bank
    (`bank`) only the views not stored yet are embedded and stored; the others are read back.
    `finish(epoch)` completes an epoch's views (those the loader dropped)."""
    kind = "cache-filling"

    def __init__(self, tower, cache, vectors, scale, device, store: Callable, finish: Callable,
                 bank: bool, name: str = "teacher"):
        super().__init__(tower, vectors, scale, name)
        self.cache, self.device, self.store, self.finish, self.bank = cache, device, store, finish, bank
        self.gives_embeddings = not (bank and cache.gives_logits)

    def __call__(self, views: Views) -> Targets:
        if not self.bank:  # slot = epoch: every view is new
            embeddings = self.tower.embed(views.images)
            self.store(views.epochs, views.indices, embeddings)
            return self.scored(embeddings)
        return self.from_bank(views)

    def from_bank(self, views: Views) -> Targets:
        """Embed only the views not stored yet (and store them); read the others back. A top-k
        cache gives logits only (of the stored views; those of the new ones are computed)."""
        slots, indices = views.slots.tolist(), views.indices.tolist()
        new = [b for b, (v, i) in enumerate(zip(slots, indices)) if not self.cache.has(v, i)]
        logits = self.cache.gives_logits
        out = torch.empty(len(indices), self.vectors.shape[0] if logits else self.cache.width,
                          dtype=torch.float32, device=self.device)
        fresh = self.tower.embed(views.images[new]) if new else None
        self.store(torch.tensor([slots[b] for b in new], dtype=torch.long),
                   torch.tensor([indices[b] for b in new], dtype=torch.long), fresh)  # every rank: a collective
        old = [b for b in range(len(indices)) if b not in set(new)]
        if new:
            out[new] = teacher_logits(fresh, self.scale, self.vectors) if logits else fresh.float()
        if old:
            out[old] = self.cache.lookup([slots[b] for b in old], [indices[b] for b in old]).to(self.device)
        return Targets(out) if logits else self.scored(out)

    def end_epoch(self, epoch: int) -> None:
        self.finish(epoch)


def check_ensemble_rule(rule: str, weights: Sequence[float], temperature: float, confidence: str,
                        n_teachers: int) -> list[float] | None:
    """The ensemble settings, checked (a ConfigError naming the key otherwise); returns the
    normalised fixed weights for rule `weights`, else None."""
    if rule not in ENSEMBLE_RULES:
        raise ConfigError(f"TRAINER.PROMPTKD.ENSEMBLE_RULE '{rule}': use one of {', '.join(ENSEMBLE_RULES)}.")
    if confidence not in CONFIDENCE_MEASURES:
        raise ConfigError(f"TRAINER.PROMPTKD.ENSEMBLE_CONFIDENCE '{confidence}': use one of "
                          f"{', '.join(CONFIDENCE_MEASURES)}.")
    if not temperature > 0:
        raise ConfigError(f"TRAINER.PROMPTKD.ENSEMBLE_TEMPERATURE must be > 0, got {temperature}.")
    if rule != "weights":
        if weights:
            raise ConfigError(f"TRAINER.PROMPTKD.ENSEMBLE_WEIGHTS {list(weights)} is read only by ENSEMBLE_RULE "
                              f"weights, but the rule is {rule}: set the rule to weights, or the weights [].")
        return None
    if len(weights) != n_teachers:
        raise ConfigError(f"TRAINER.PROMPTKD.ENSEMBLE_WEIGHTS has {len(weights)} weights for {n_teachers} teachers "
                          "(TEACHER_DIR, then TEACHER_DIRS): give one per teacher, in that order.")
    if any(not (float(w) >= 0 and math.isfinite(float(w))) for w in weights) or sum(map(float, weights)) <= 0:
        raise ConfigError(f"TRAINER.PROMPTKD.ENSEMBLE_WEIGHTS {list(weights)}: weights must be finite, >= 0 and "
                          "not all 0 (they are normalised to sum 1).")
    total = sum(map(float, weights))
    return [float(w) / total for w in weights]


def teacher_weights(log_probs: torch.Tensor, rule: str, weights: Sequence[float] | None = None,
                    temperature: float = 1.0, confidence: str = "max_prob") -> torch.Tensor:
    """Each teacher's weight of each image, [M, B] (summing to 1 over M), from the teachers'
    log-probabilities [M, B, C] (at the objective's temperature)."""
    m, b = log_probs.shape[:2]
    if rule == "mean_prob":
        return log_probs.new_full((m, b), 1.0 / m)
    if rule == "weights":
        return torch.tensor(list(weights), dtype=log_probs.dtype, device=log_probs.device)[:, None].expand(m, b)
    if confidence == "max_prob":
        score = log_probs.max(dim=-1).values.exp()
    else:  # negative entropy / log C: 0 for a one-hot teacher, -1 for a uniform one
        score = (log_probs.exp() * log_probs).sum(dim=-1) / math.log(log_probs.shape[-1])
    return torch.softmax(score / temperature, dim=0)


def mix_probabilities(logits: Sequence[torch.Tensor], temperature: float, rule: str,
                      weights: Sequence[float] | None = None, confidence_temperature: float = 1.0,
                      confidence: str = "max_prob") -> torch.Tensor:
    """Logits whose softmax at `temperature` is the teachers' mixed probabilities: T · log Σ_m
    w_m p_m with p_m = softmax(logits_m / T), computed as a log-sum-exp (no log of 0). fp32."""
    with fp32_scoring(logits[0]):
        log_p = torch.stack([torch.log_softmax(t.float() / temperature, dim=-1) for t in logits])
        w = teacher_weights(log_p, rule, weights, confidence_temperature, confidence)
        return temperature * torch.logsumexp(log_p + w.clamp_min(1e-45).log()[..., None], dim=0)


class Ensemble(TeacherTargets):
    """Several teachers of the same classes (in the same order), each its own source (live,
    cache or filling); their probabilities mixed per image by `rule` (module docstring).
    Gives no embeddings (the teachers' widths differ)."""
    kind = "ensemble"
    gives_embeddings = False

    def __init__(self, teachers: Sequence[TeacherTargets], temperature: float, rule: str,
                 weights: Sequence[float] | None = None, confidence_temperature: float = 1.0,
                 confidence: str = "max_prob"):
        super().__init__(teachers[0].vectors, teachers[0].scale, "+".join(t.name for t in teachers))
        self.teachers, self.temperature, self.rule = list(teachers), temperature, rule
        self.weights, self.confidence_temperature, self.confidence = weights, confidence_temperature, confidence

    @property
    def members(self) -> list[TeacherTargets]:
        return self.teachers

    def __call__(self, views: Views) -> Targets:
        logits = [t(views).logits for t in self.teachers]
        return Targets(mix_probabilities(logits, self.temperature, self.rule, self.weights,
                                         self.confidence_temperature, self.confidence))

    def end_epoch(self, epoch: int) -> None:
        for t in self.teachers:
            t.end_epoch(epoch)

    def describe(self) -> dict:
        """The rule as run.json records it."""
        out = {"rule": self.rule, "teachers": [t.name for t in self.teachers]}
        if self.rule == "weights":
            out["weights"] = list(self.weights)
        if self.rule == "confidence":
            out.update(confidence=self.confidence, temperature=self.confidence_temperature)
        return out


def build_ensemble(teachers: Sequence[TeacherTargets], temperature: float, rule: str = "mean_prob",
                   weights: Sequence[float] | None = None, confidence_temperature: float = 1.0,
                   confidence: str = "max_prob") -> TeacherTargets:
    """One teacher: that teacher itself (an ensemble of one is exactly it); several: an Ensemble."""
    if len(teachers) == 1:
        return teachers[0]
    return Ensemble(teachers, temperature, rule, weights, confidence_temperature, confidence)


def check_same_classes(first: Sequence[str], first_name: str, other: Sequence[str], other_name: str) -> None:
    """Teachers of an ensemble score the same classes in the same order; else an error naming both."""
    if list(first) == list(other):
        return
    a, b = list(first), list(other)
    if sorted(a) == sorted(b):
        where = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        why = f"the same {len(a)} classes in another order (class {where}: '{a[where]}' vs '{b[where]}')"
    else:
        only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
        why = (f"{len(a)} vs {len(b)} classes; only in the first: {only_a or 'none'}, only in the second: "
               f"{only_b or 'none'}")
    raise ConfigError(f"The teachers of an ensemble must score the same classes in the same order, but {first_name} "
                      f"and {other_name} differ: {why}. Export both teachers for the same dataset "
                      "(DATASET.NAME, the same class names) and list them in TEACHER_DIR / TEACHER_DIRS.")


def select_vocabulary(teacher_full: torch.Tensor, k: int, mode: str, temperature: float = 1.0):
    """Class-agnostic distillation's vocabulary entries: `image` (per row, the teacher's top k
    of that image: index [B, k]) or `batch` (KDPL: the top k of the batch by the teacher's mean
    probability at `temperature`, the same for every image: index [k], ascending)."""
    k = min(k, teacher_full.shape[-1])
    if mode == "image":
        return teacher_full.topk(k, dim=-1).indices
    with fp32_scoring(teacher_full):
        mean = torch.softmax(teacher_full.float() / temperature, dim=-1).mean(dim=0)
    return mean.topk(k).indices.sort().values
