"""A finished run of a host codebase's trainer as PromptKD's teacher (docs/plugin.md).

With TRAINER.PROMPTKD.TEACHER_TRAINER <its registered name> (PromptSRC, CoOp, a user's method),
TEACHER_DIR is that host run's output folder and nothing is converted by hand:

* the teacher's model is built by the host trainer's own `check_cfg` + `build_model`, from a
  copy of this run's config with TEACHER_CONFIG (the YAML the host run was trained with) merged
  in and MODEL.BACKBONE.NAME = TEACHER_BACKBONE, on *all* the dataset's classes in label order;
* its weights are loaded by the host trainer's own `load_model(TEACHER_DIR, epoch)`
  (TEACHER_LOAD_EPOCH; -1: model-best if the run saved one, else its last epoch);
* its text side is run once: forward hooks on `model.text_encoder` and `model.image_encoder`
  (the attributes every CoOp-family model has) capture the text features of all classes, which
  must come from one call and not depend on the image (CoCoOp's do: refused in this version),
  and its own eval-mode logits on probe batches must be
  `logit_scale.exp() * normalise(image) @ normalise(text).T` (else its forward is not of that
  pattern: refused, naming the trainer);
* class vectors = normalise(text features) in fp32, written once to
  OUTPUT_DIR/teacher_export/class_vectors_<Dataset>.pt (promptkd.class_vectors format; the teacher
  named by trainer, run folder, backbone, checkpoint epoch and a fingerprint of its learned
  weights), so run.json and the records say which teacher was distilled;
* each step, `HostTeacherScorer.embed` runs the host model's own forward in eval mode without
  autograd, with its text encoder answering from the cached features, and returns the image
  encoder's output: the step pays the teacher's image tower only, as with a PromptKD export.

Not in this version: the teacher cache (TEACHER_CACHE), VOCABULARY and FEATURE_LOSS with a host
teacher, and host teachers whose text depends on the image.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from promptkd import distributed as dist_
from promptkd.backbones import Preprocess
from promptkd.class_vectors import ClassVectors, ImageSide, class_vectors_file
from promptkd.errors import ConfigError, MissingFileError
from promptkd.image_inputs import TowerInput
from promptkd.trainers.host_methods import build_host_trainer, eval_mode, is_host_trainer

logger = logging.getLogger("promptkd")

EXPORT_FOLDER = "teacher_export"  # under the student run's OUTPUT_DIR
BEST_FILE = "model-best.pth.tar"  # Dassl's names, which the hosts' load_model read
EPOCH_FILE = re.compile(r"model\.pth\.tar-(\d+)")
PROBE_SIZES = (2, 3)  # images in the two probe batches: >1, so a text side run per image shows


def check_cfg(cfg) -> None:
    """The TEACHER_* keys of a host teacher, and what it cannot be combined with yet."""
    kd = cfg.TRAINER.PROMPTKD
    if not kd.TEACHER_TRAINER:
        for key in ("TEACHER_CONFIG", "TEACHER_BACKBONE"):
            if kd[key]:
                raise ConfigError(f"TRAINER.PROMPTKD.{key} is set but TEACHER_TRAINER is not: {key} describes a host "
                                  "run as the teacher; set TEACHER_TRAINER to its trainer name, or unset "
                                  f"{key} (a PromptKD export in TEACHER_DIR needs neither).")
        return
    host_trainer_class(kd.TEACHER_TRAINER)
    name = f"TRAINER.PROMPTKD.TEACHER_TRAINER {kd.TEACHER_TRAINER}"
    for key, why in (("TEACHER_CACHE", "the teacher cache is not built for host teachers yet: set it ''"),
                     ("VOCABULARY", "a host model scores the classes it was built on, not a vocabulary: set it ''"),
                     ("CLASS_VECTORS", "the class vectors come from the host run itself: set it ''")):
        if kd[key]:
            raise ConfigError(f"{name}: TRAINER.PROMPTKD.{key} cannot be used with a host run as the teacher; {why}.")
    if kd.FEATURE_LOSS != "off":
        raise ConfigError(f"{name}: TRAINER.PROMPTKD.FEATURE_LOSS {kd.FEATURE_LOSS} is not supported with a host run "
                          "as the teacher in this version: set FEATURE_LOSS off.")
    if not kd.TEACHER_DIR or not os.path.isdir(kd.TEACHER_DIR):
        raise MissingFileError(f"{name}: TRAINER.PROMPTKD.TEACHER_DIR '{kd.TEACHER_DIR}' is not a folder; give the "
                               "host run's output folder (its --output-dir, holding its Dassl checkpoints).")
    if not kd.TEACHER_CONFIG:
        raise ConfigError(f"{name}: set TRAINER.PROMPTKD.TEACHER_CONFIG to the trainer YAML the host run was trained "
                          "with (its --config-file): the teacher's model is built from it.")
    if not os.path.isfile(kd.TEACHER_CONFIG):
        raise MissingFileError(f"TRAINER.PROMPTKD.TEACHER_CONFIG {kd.TEACHER_CONFIG} does not exist; give the trainer "
                               "YAML the host run was trained with (relative paths are from the working directory).")
    if kd.TEACHER_LOAD_EPOCH == 0 or kd.TEACHER_LOAD_EPOCH < -1:
        raise ConfigError(f"TRAINER.PROMPTKD.TEACHER_LOAD_EPOCH must be -1 (model-best if saved, else the last epoch) "
                          f"or an epoch >= 1, got {kd.TEACHER_LOAD_EPOCH}.")


def host_trainer_class(name: str) -> type:
    """The registered host trainer `name` (exact spelling, as Dassl looks trainers up)."""
    from dassl.engine import TRAINER_REGISTRY  # noqa: PLC0415

    names = TRAINER_REGISTRY.registered_names()
    hosts = sorted(n for n in names if is_host_trainer(TRAINER_REGISTRY.get(n)))
    if name not in names:
        raise ConfigError(f"TRAINER.PROMPTKD.TEACHER_TRAINER '{name}' is not a registered trainer. Host trainers "
                          f"registered here: {', '.join(hosts) or 'none'} (run through the host's train.py, "
                          "docs/plugin.md).")
    cls = TRAINER_REGISTRY.get(name)
    if not is_host_trainer(cls):
        raise ConfigError(f"TRAINER.PROMPTKD.TEACHER_TRAINER '{name}' is not a host codebase's trainer; a run of ours "
                          "(PromptKDTeacher, PKD.*) exports its teacher itself: set TEACHER_TRAINER '' and TEACHER_DIR "
                          "to its export folder. Host trainers registered here: " + (", ".join(hosts) or "none") + ".")
    return cls


def _yaml_backbone(path: str) -> str:
    """MODEL.BACKBONE.NAME as the YAML file sets it, or ''."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    name = ((data.get("MODEL") or {}).get("BACKBONE") or {}).get("NAME", "")
    return name if isinstance(name, str) else ""


def teacher_cfg(cfg):
    """This run's config, with TEACHER_CONFIG merged in and the teacher's backbone and name: what
    the host trainer's build_model reads."""
    kd = cfg.TRAINER.PROMPTKD
    cfg_t = cfg.clone()
    cfg_t.defrost()
    try:
        cfg_t.merge_from_file(kd.TEACHER_CONFIG)
    except (KeyError, ValueError, AssertionError) as err:
        raise ConfigError(f"TRAINER.PROMPTKD.TEACHER_CONFIG {kd.TEACHER_CONFIG} does not merge into this run's config "
                          f"({err}). Give the host run's trainer YAML and run through the host's train.py, whose "
                          "extend_cfg defines its keys.") from None
    backbone = kd.TEACHER_BACKBONE or _yaml_backbone(kd.TEACHER_CONFIG)
    if not backbone:
        raise ConfigError(f"TRAINER.PROMPTKD.TEACHER_BACKBONE is not set and TEACHER_CONFIG {kd.TEACHER_CONFIG} names "
                          "no MODEL.BACKBONE.NAME: set TEACHER_BACKBONE to the host run's backbone (e.g. ViT-L/14).")
    cfg_t.MODEL.BACKBONE.NAME = backbone
    cfg_t.TRAINER.NAME = kd.TEACHER_TRAINER
    cfg_t.OPTIM.WARMUP_EPOCH = 0  # its build_model makes an optimiser and LR schedule that are never used
    cfg_t.freeze()
    return cfg_t


def input_preprocess(cfg) -> Preprocess:
    """The images a config's Dassl transforms make: INPUT.SIZE, its normalisation (none when
    `normalize` is not among INPUT.TRANSFORMS), INPUT.INTERPOLATION."""
    i = cfg.INPUT
    normalised = "normalize" in i.TRANSFORMS
    return Preprocess.of(tuple(i.SIZE), i.PIXEL_MEAN if normalised else (0.0, 0.0, 0.0),
                         i.PIXEL_STD if normalised else (1.0, 1.0, 1.0), i.INTERPOLATION)


def learned_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names and fp32 values of the parameters the host trains (requires_grad
    after its build_model), as 16 hex digits."""
    h = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_epoch(run_dir: str, names: list[str], wanted: int) -> int | None:
    """The epoch to pass to the host's load_model: `wanted` if >= 1; for -1, None (the hosts'
    default, model-best.pth.tar) where every model folder has that file, else the last epoch
    every folder has a model.pth.tar-N of."""
    if wanted >= 1:
        return wanted
    if all(os.path.isfile(os.path.join(run_dir, n, BEST_FILE)) for n in names):
        return None
    common = None
    for n in names:
        epochs = {int(m.group(1)) for f in os.listdir(os.path.join(run_dir, n)) if (m := EPOCH_FILE.fullmatch(f))}
        common = epochs if common is None else common & epochs
    if not common:
        raise MissingFileError(f"TRAINER.PROMPTKD.TEACHER_DIR {run_dir} holds no {BEST_FILE} and no model.pth.tar-N "
                               f"saved for every model of the host trainer ({', '.join(names)}): give a finished run's "
                               "output folder, or its epoch with TEACHER_LOAD_EPOCH.")
    return max(common)


def load_host_weights(builder, run_dir: str, wanted: int) -> dict:
    """The host run's weights, loaded by the host trainer's own load_model; returns what was
    loaded (epoch and files) for the records."""
    name = type(builder).__name__
    names = list(builder.get_model_names())
    if not names:
        raise ConfigError(f"The host's {name} registered no model (register_model) in build_model, so its load_model "
                          "has nothing to load: it cannot be a teacher.")
    missing = [n for n in names if not os.path.isdir(os.path.join(run_dir, n))]
    if missing:
        raise MissingFileError(f"TRAINER.PROMPTKD.TEACHER_DIR {run_dir} has no folder {', '.join(missing)}: a run of the "
                               f"host's {name} saves its weights in OUTPUT_DIR/<{'|'.join(names)}>/. Give that run's "
                               "output folder.")
    epoch = checkpoint_epoch(run_dir, names, wanted)
    file = BEST_FILE if epoch is None else f"model.pth.tar-{epoch}"
    try:
        builder.load_model(run_dir, epoch=epoch)
    except (FileNotFoundError, RuntimeError) as err:
        raise ConfigError(
            f"The host's {name}.load_model({run_dir!r}, epoch={epoch}) failed: {str(err).splitlines()[0]} The teacher "
            "is built from TEACHER_CONFIG and TEACHER_BACKBONE on all classes of the dataset: they must be the host "
            "run's own settings (a class-specific context trained on the base classes cannot score all classes), "
            "and TEACHER_LOAD_EPOCH an epoch it saved.") from None
    return {"epoch": epoch if epoch is not None else "best",
            "checkpoints": [os.path.abspath(os.path.join(run_dir, n, file)) for n in names]}


@contextlib.contextmanager
def exact_matmuls(device: torch.device):
    """True fp32 matmuls (no TF32, no reduced-precision fp16 / bf16 sums) on a GPU for the
    duration: the pattern check compares arithmetic, not the GPU's fast modes."""
    if torch.device(device).type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    saved = (torch.get_float32_matmul_precision(), m.allow_fp16_reduced_precision_reduction,
             m.allow_bf16_reduced_precision_reduction)
    torch.set_float32_matmul_precision("highest")
    m.allow_fp16_reduced_precision_reduction = m.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        m.allow_fp16_reduced_precision_reduction, m.allow_bf16_reduced_precision_reduction = saved[1:]


def logits_tolerance(dtype: torch.dtype, width: int) -> float:
    """Largest |host logit - ours| / logit scale accepted by the pattern check.

    Both sides score the same captured features; they differ only by rounding. With unit
    roundoff u of the host's logits' dtype and width D: normalising each side and rounding the
    dot product and its product with the scale cost a few u each (16u covers them with margin),
    and two fp32-accumulated D-term sums of unit vectors, summed in different orders, differ by
    at most D·u32 (the worst-case bound). fp32, D = 768: 4.7e-5 of the scale (4.7e-3 logits at
    scale 100); fp16: 7.9e-3 (0.79 logits). A forward of another pattern (another scale, an
    adapter after the image encoder, a bias) is off by whole logits."""
    u, u32 = torch.finfo(dtype).eps / 2, torch.finfo(torch.float32).eps / 2
    return 16 * u + width * u32


class _Recorder:
    """Forward hooks on the text and image encoders, keeping each call's output."""

    def __init__(self, model: nn.Module):
        self.text, self.image = [], []
        self.handles = [model.text_encoder.register_forward_hook(lambda m, i, o: self.text.append(o)),
                        model.image_encoder.register_forward_hook(lambda m, i, o: self.image.append(o))]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _shape(x) -> str:
    return str(tuple(x.shape)) if torch.is_tensor(x) else type(x).__name__


def capture_text_features(model: nn.Module, name: str, n_classes: int, size: tuple, device) -> torch.Tensor:
    """The host model's text features of its classes [C, D] (its own dtype), from its eval
    forward, after checking the pattern on two probe batches (seeded noise images of the
    teacher's input size; the global RNG is untouched)."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, *size, generator=gen).to(device) for n in PROBE_SIZES]
    runs = []
    with torch.no_grad(), eval_mode(model), exact_matmuls(device):
        for images in batches:
            with _Recorder(model) as rec:
                out = model(images)
            runs.append((images, rec.text, rec.image, out))
    where = (f"The host's {name} cannot be a teacher in this version: its model's eval forward (model(images)) must "
             "call text_encoder once for all classes and image_encoder once for the batch, and return "
             "logit_scale.exp() * normalise(image features) @ normalise(text features).T")
    for images, text, image, out in runs:
        n = images.shape[0]
        rows = text[0].shape[0] if len(text) == 1 and torch.is_tensor(text[0]) and text[0].dim() >= 2 else None
        if len(text) == n or rows == n * n_classes:
            raise ConfigError(f"{where}; on a batch of {n} images it called text_encoder {len(text)} time(s), with "
                              f"outputs {', '.join(_shape(t) for t in text[:3])} for {n_classes} classes: its text side "
                              "depends on the image (CoCoOp-like), which needs the teacher cache for host teachers, "
                              "not built yet.")
        if len(text) != 1 or not torch.is_tensor(text[0]) or text[0].shape[0] != n_classes or text[0].dim() != 2:
            raise ConfigError(f"{where}; on a batch of {n} images text_encoder gave "
                              f"{[_shape(t) for t in text] or 'no call'}, not one [{n_classes}, D] tensor.")
        if len(image) != 1 or not torch.is_tensor(image[0]) or tuple(image[0].shape) != (n, text[0].shape[1]):
            raise ConfigError(f"{where}; on a batch of {n} images image_encoder gave "
                              f"{[_shape(t) for t in image] or 'no call'}, not one [{n}, {text[0].shape[1]}] tensor.")
        if not torch.is_tensor(out) or tuple(out.shape) != (n, n_classes):
            raise ConfigError(f"{where}; it returned {_shape(out)} in eval mode, not logits [{n}, {n_classes}].")
    text_a, text_b = runs[0][1][0], runs[1][1][0]
    width, scale = text_a.shape[1], float(model.logit_scale.detach().float().exp())
    vectors_a, vectors_b = F.normalize(text_a.float(), dim=-1), F.normalize(text_b.float(), dim=-1)
    tol = logits_tolerance(text_a.dtype, width)
    text_gap = (vectors_a - vectors_b).abs().max().item()
    if text_gap > tol:
        raise ConfigError(f"{where}; its text features differ between two batches of images (by up to {text_gap:.3g} "
                          "after normalising): its text side depends on the image, which needs the teacher cache for "
                          "host teachers, not built yet.")
    for images, _, image, out in runs:  # scored with the first batch's text features, as each step will be
        ours = scale * F.normalize(image[0].float(), dim=-1) @ vectors_a.t()
        gap, allowed = (out.float() - ours).abs().max().item(), scale * logits_tolerance(out.dtype, width)
        if not gap <= allowed:
            raise ConfigError(f"{where}; its logits differ from that by up to {gap:.4g} (allowed {allowed:.3g} for "
                              f"{out.dtype} logits of width {width} at scale {scale:.4g}): its forward is not of that "
                              "pattern.")
    logger.info("Host teacher %s: text features of %d classes (width %d, %s) from one text_encoder call; its eval "
                "logits match exp(logit_scale) · cos(image, text) on probe batches of %s images (largest gap %.3g, "
                "allowed %.3g).", name, n_classes, width, text_a.dtype, "/".join(map(str, PROBE_SIZES)), gap, allowed)
    return text_a.detach()


class HostTeacherScorer(nn.Module):
    """The host model's image side each step: its own eval forward, no autograd, its text
    encoder answering from the cached text features; `embed` returns the normalised output of
    its image encoder (fp32), as `promptkd.student.TeacherImageScorer.embed` does."""

    def __init__(self, model: nn.Module, text_features: torch.Tensor, name: str,
                 input_adapter: nn.Module | None = None):
        super().__init__()
        model.requires_grad_(False)
        self.host = model
        self.name = name
        self.input_adapter = input_adapter if input_adapter is not None else nn.Identity()
        self.register_buffer("text_features", text_features.detach().clone(), persistent=False)
        self.register_buffer("logit_scale", model.logit_scale.detach().float().clone().reshape(()), persistent=False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        encoder, cached = self.host.text_encoder, self.text_features
        own = encoder.__dict__.get("forward")
        encoder.forward = lambda *args, **kwargs: cached  # this instance only, for this call
        captured = []
        handle = self.host.image_encoder.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            with eval_mode(self.host):
                self.host(self.input_adapter(images))
        finally:
            handle.remove()
            if own is None:
                del encoder.forward
            else:
                encoder.forward = own
        if len(captured) != 1:
            raise ConfigError(f"The host's {self.name} called image_encoder {len(captured)} times in one forward; a "
                              "teacher's must call it once per batch.")
        return F.normalize(captured[0].float(), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)


@dataclass
class HostTeacher:
    vectors: ClassVectors
    side: ImageSide  # the teacher's logit scale, width and fingerprint (its image tower is the host model's)
    scorer: HostTeacherScorer
    fit: TowerInput  # the run's images -> the teacher's input size / normalisation
    vectors_path: str


def build_host_teacher(cfg, classnames: list[str], device: torch.device) -> HostTeacher:
    """The host run in TRAINER.PROMPTKD.TEACHER_DIR as the teacher of `classnames` (all the
    dataset's classes, label order). The class vectors are written once (rank 0) to
    OUTPUT_DIR/teacher_export/."""
    kd = cfg.TRAINER.PROMPTKD
    cls = host_trainer_class(kd.TEACHER_TRAINER)
    name = cls.__name__
    cfg_t = teacher_cfg(cfg)
    with torch.random.fork_rng(devices=[]):  # the student starts the same whatever the teacher
        builder = build_host_trainer(cls, cfg_t, classnames, device)
    model = getattr(builder, "model", None)
    model = model.module if isinstance(model, nn.DataParallel) else model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"The host's trainer {name} built no `self.model` (an nn.Module): it cannot be a teacher.")
    missing = [a for a in ("text_encoder", "image_encoder", "logit_scale") if not hasattr(model, a)]
    if missing:
        raise ConfigError(f"The host's {name} model ({type(model).__name__}) has no {', '.join(missing)}: a teacher "
                          "needs the CoOp-family attributes text_encoder, image_encoder and logit_scale.")
    built = learned_fingerprint(model)
    loaded = load_host_weights(builder, kd.TEACHER_DIR, kd.TEACHER_LOAD_EPOCH)
    fingerprint = learned_fingerprint(model)
    if fingerprint == built:
        raise ConfigError(f"The host's {name}.load_model({kd.TEACHER_DIR!r}, epoch={loaded['epoch']}) left its learned "
                          "weights as built: nothing of the run was loaded (a key mismatch its load_model ignores?).")
    text = capture_text_features(model, name, len(classnames), tuple(cfg_t.INPUT.SIZE), device)
    logit_scale = float(model.logit_scale.detach().float())
    run_dir, backbone = os.path.abspath(kd.TEACHER_DIR), cfg_t.MODEL.BACKBONE.NAME
    teacher = {"method": name, "host_trainer": name, "host_class": f"{cls.__module__}.{cls.__qualname__}",
               "run": run_dir, "config": os.path.abspath(kd.TEACHER_CONFIG), "backbone": backbone,
               "checkpoint_epoch": loaded["epoch"], "checkpoints": loaded["checkpoints"], "fingerprint": fingerprint,
               "fingerprint_of": "learned weights", "logit_scale": logit_scale, "precision": "fp32",
               "text_precision": str(text.dtype).replace("torch.", "")}
    vectors = ClassVectors(F.normalize(text.float(), dim=-1).cpu(), list(classnames), cfg.DATASET.NAME, teacher)
    side = ImageSide(backbone={"kind": "host", "trainer": name, "name": backbone, "run": run_dir},
                     fingerprint=fingerprint, prompts=[], logit_scale=logit_scale, width=vectors.width, method=name)
    fit = TowerInput(input_preprocess(cfg), input_preprocess(cfg_t))
    scorer = HostTeacherScorer(model, text, name, None if fit.identity else fit)
    path = class_vectors_file(os.path.join(cfg.OUTPUT_DIR, EXPORT_FOLDER), cfg.DATASET.NAME)
    if dist_.is_main():
        vectors.save(path)
    logger.info("Teacher: the host's %s run %s (backbone %s, checkpoint %s, learned weights %s); class vectors of %d "
                "classes written to %s; each step runs its image side only.", name, run_dir, backbone,
                loaded["epoch"], fingerprint, len(classnames), path)
    return HostTeacher(vectors=vectors, side=side, scorer=scorer, fit=fit, vectors_path=path)
