"""A trained run as a stand-alone image classifier: the `predictor.pt` record and its model.

When a run's model is final, its trainer writes `<export dir>/predictor.pt` (atomically), a
small versioned record of everything needed to classify images without Dassl, a dataset or
the run's config (plain tensors, strings and numbers; `torch.load(weights_only=True)` reads it):

* ``backbone``: the image tower's reference (a CLIP name / file, or a published checkpoint),
  never a copy of it, and the ``fingerprint`` of the weights it was trained with;
* ``weights``: what was trained on the image side: the deep visual prompts (``prompts``) and,
  for a PromptKD student, the projector with its BatchNorm statistics (``projector``);
* ``classnames``, ``class_vectors`` (L2-normalised, label order) and ``logit_scale`` (log);
* ``preprocess``: the model's test transform (resize the shorter side, centre crop, mean /
  std; interpolation), so that another backbone family can record its own values.

logits = exp(logit_scale) · normalise(projector(f)) · Vᵀ (no projector: normalise(f) · Vᵀ),
f the prompted image feature: exactly the trainer's evaluation. `Predictor.from_run(RUN_DIR)`
rebuilds it; `promptkd.deploy.predict` and `promptkd.deploy.export_model` both go through it.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import backbones
from ..backbones import OPENAI_MEAN, OPENAI_STD, RESIZE_MODES, visual_from_state_dict
from ..checkpoints import split_published_student, split_published_teacher
from ..class_vectors import ClassVectors, ImageSide, visual_fingerprint
from ..encoders import PromptedImageEncoder, freeze_clip
from ..errors import ConfigError, MissingFileError, UserError
from ..io import atomic_save, load_torch
from ..student import Projector

PREDICTOR_FILE = "predictor.pt"
FORMAT_VERSION = 1
KIND = "predictor"
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

HOW_TO_MAKE = ("Runs write it to their export folder when the model is final; "
               "`python train.py <the run's arguments> --eval-only --model-dir RUN_DIR` writes it again (also for "
               "a run made before this version, or a published checkpoint).")


def preprocess_settings(size, interpolation: str = "bicubic", mean=OPENAI_MEAN, std=OPENAI_STD,
                        resize_mode: str = "shortest") -> dict:
    """The test transform: resize the shorter side to max(size) ("shortest"; "squash": the
    whole image to `size`), centre-crop `size` (H, W), to [0, 1], then normalise with `mean` /
    `std` (None: no normalisation)."""
    size = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"Interpolation '{interpolation}' is not one of {', '.join(INTERPOLATIONS)}.")
    if resize_mode not in RESIZE_MODES:
        raise ConfigError(f"Resize mode '{resize_mode}' is not one of {', '.join(RESIZE_MODES)}.")
    return {"resize": max(size) if resize_mode == "shortest" else size, "crop": size, "resize_mode": resize_mode,
            "interpolation": interpolation, "mean": None if mean is None else [float(m) for m in mean],
            "std": None if std is None else [float(s) for s in std]}


def image_transform(pre: dict):
    """torchvision transform of a `preprocess_settings` dict (PIL RGB image -> tensor)."""
    from torchvision import transforms as T

    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
            "nearest": T.InterpolationMode.NEAREST}[pre["interpolation"]]
    steps = [T.Resize(pre["resize"], interpolation=mode), T.CenterCrop(pre["crop"]), T.ToTensor()]
    if pre.get("mean") is not None:
        steps.append(T.Normalize(mean=pre["mean"], std=pre["std"]))
    return T.Compose(steps)


@dataclass
class PredictorRecord:
    method: str  # the trainer that made it (PromptKD, PromptKDTeacher, CoOp, ...)
    dataset: str
    backbone: dict  # {"kind": "clip", "name"} | {"kind": "published" | "published_student", "path"}
    fingerprint: str  # of the image tower's weights (`class_vectors.visual_fingerprint`)
    weights: dict  # {"prompts": [[n_ctx, width] ...], "projector": state dict or None}
    classnames: list
    class_vectors: torch.Tensor  # [C, D] fp32, unit rows
    logit_scale: float  # log scale, as CLIP stores it
    preprocess: dict
    teacher: dict = field(default_factory=dict)  # provenance of the class vectors
    weights_dir: str = ""  # where named CLIP files were found at training (a hint)

    def save(self, path: str) -> None:
        data = {"kind": KIND, "format_version": FORMAT_VERSION, **asdict(self)}
        data["class_vectors"] = self.class_vectors.detach().to("cpu", torch.float32).contiguous()
        data["weights"] = {
            "prompts": [p.detach().to("cpu", torch.float32).contiguous() for p in self.weights["prompts"]],
            "projector": None if self.weights.get("projector") is None else
            {k: v.detach().cpu().clone() for k, v in self.weights["projector"].items()},
        }
        atomic_save(data, path)

    @classmethod
    def load(cls, path: str) -> "PredictorRecord":
        data = load_torch(path, what=PREDICTOR_FILE, fix=HOW_TO_MAKE)
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise UserError(f"{path} is not a predictor file (kind {data.get('kind') if isinstance(data, dict) else None!r}). "
                            f"{HOW_TO_MAKE}")
        if data.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{path} has predictor format version {data.get('format_version')}; this code reads "
                            f"version {FORMAT_VERSION}. {HOW_TO_MAKE}")
        names = [f for f in cls.__dataclass_fields__]
        return cls(**{k: data[k] for k in names if k in data})

    @classmethod
    def for_student(cls, student, vectors: ClassVectors, backbone: dict, preprocess: dict,
                    method: str = "PromptKD", weights_dir: str = "", fingerprint: str = "") -> "PredictorRecord":
        """A PromptKD student (`student.PromptKDStudent`) with the class vectors it was distilled on.
        `fingerprint`: of the backbone's fp32 weights, when the live tower is in half precision."""
        enc = student.image_encoder
        return cls(method=method, dataset=vectors.dataset, backbone=dict(backbone),
                   fingerprint=fingerprint or visual_fingerprint(enc.visual),
                   weights={"prompts": list(enc.prompts), "projector": student.projector.state_dict()},
                   classnames=list(vectors.classnames), class_vectors=vectors.vectors,
                   logit_scale=float(student.logit_scale.float().item()), preprocess=preprocess,
                   teacher=dict(vectors.teacher), weights_dir=weights_dir or "")

    @classmethod
    def for_image_side(cls, vectors: ClassVectors, side: ImageSide, preprocess: dict,
                       weights_dir: str = "") -> "PredictorRecord":
        """A prompt-learning method's export (its class vectors and image side)."""
        return cls(method=side.method, dataset=vectors.dataset, backbone=dict(side.backbone),
                   fingerprint=side.fingerprint, weights={"prompts": list(side.prompts), "projector": None},
                   classnames=list(vectors.classnames), class_vectors=vectors.vectors,
                   logit_scale=float(side.logit_scale), preprocess=preprocess,
                   teacher=dict(vectors.teacher), weights_dir=weights_dir or "")


def reference_tower(backbone: dict, weights_dir: str | None = None, trusted: bool = False) -> tuple[nn.Module, str]:
    """(the image tower a backbone reference names, fp32 eval; where its weights are)."""
    kind = backbone.get("kind")
    if kind in ("published", "published_student") and not trusted:
        raise UserError(f"The model's backbone weights are in the published checkpoint {backbone['path']}, a torch "
                        "1.x file that pickles Python objects: read it only if you trust it, with --trust-pickled "
                        "(Predictor.from_run(..., trusted=True)).")
    if kind in ("clip", "open_clip"):
        return backbones.load_image_tower(backbone["name"], weights_dir)[0], backbone["name"]
    if kind == "published":
        state = split_published_teacher(backbone["path"], trusted)["clip_state"]
    elif kind == "published_student":
        pub = split_published_student(backbone["path"], trusted)
        state = {**pub["visual_state"], "logit_scale": pub["logit_scale"]}
    else:
        raise UserError(f"Unknown backbone reference {backbone} in the predictor file.")
    return visual_from_state_dict(state)[0], backbone["path"]


def build_image_tower(backbone: dict, fingerprint: str, weights_dir: str | None = None,
                      trusted: bool = False) -> nn.Module:
    """Build the referenced image tower (fp32, eval) and check its weights' fingerprint."""
    visual, where = reference_tower(backbone, weights_dir, trusted)
    found = visual_fingerprint(visual)
    if found != fingerprint:
        raise UserError(f"The backbone weights at {where} have fingerprint {found}, but the model was trained "
                        f"with {fingerprint}: these are not the weights it was trained on.")
    return visual


class ImageClassifier(nn.Module):
    """images [B, 3, H, W] (preprocessed) -> logits [B, C]; class vectors and logit scale
    are buffers, so one module (or one exported file) is the whole classifier."""

    def __init__(self, visual: nn.Module, prompts: list, projector_state: dict | None,
                 class_vectors: torch.Tensor, logit_scale: float):
        super().__init__()
        freeze_clip(visual)
        n_ctx = prompts[0].shape[0] if prompts else 0
        self.image_encoder = PromptedImageEncoder(visual, n_ctx=n_ctx, depth=len(prompts))
        self.projector = None
        if projector_state is not None:
            out_dim, in_dim = projector_state["0.weight"].shape
            self.projector = Projector(in_dim, out_dim)
            self.projector.load_state_dict(projector_state)
        with torch.no_grad():
            for p, value in zip(self.image_encoder.prompts, prompts):
                p.copy_(value)
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("class_vectors", class_vectors.detach().to(torch.float32).clone())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale), dtype=torch.float32))
        self.eval()

    def train(self, mode: bool = True):  # always inference (BatchNorm uses its running stats)
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.image_encoder(images).float()
        if self.projector is not None:
            f = self.projector(f)
        return self.logit_scale.exp() * F.normalize(f, dim=-1) @ self.class_vectors.t()


def find_record(path: str) -> str:
    """`path` itself, `path/predictor.pt` or `path/export/predictor.pt`."""
    for candidate in (path, os.path.join(path, PREDICTOR_FILE), os.path.join(path, "export", PREDICTOR_FILE)):
        if os.path.isfile(candidate):
            return candidate
    if not os.path.exists(path):
        raise MissingFileError(f"{path} does not exist: give a run's output folder, its export folder or a "
                               f"{PREDICTOR_FILE} file.")
    raise MissingFileError(f"No {PREDICTOR_FILE} in {path} or {os.path.join(path, 'export')}. {HOW_TO_MAKE}")


class Predictor:
    """A record, its rebuilt `ImageClassifier` and its test transform."""

    def __init__(self, record: PredictorRecord, model: ImageClassifier, path: str = ""):
        self.record, self.model, self.path = record, model, path
        self.transform = image_transform(record.preprocess)

    @property
    def classnames(self) -> list[str]:
        return list(self.record.classnames)

    @classmethod
    def from_run(cls, run_dir: str, weights_dir: str | None = None, trusted: bool = False) -> "Predictor":
        path = find_record(run_dir)
        record = PredictorRecord.load(path)
        visual = build_image_tower(record.backbone, record.fingerprint, weights_dir or record.weights_dir or None,
                                  trusted)
        model = ImageClassifier(visual, record.weights["prompts"], record.weights.get("projector"),
                                record.class_vectors, record.logit_scale)
        return cls(record, model, path)

    def metadata(self) -> dict:
        """What an exported file records besides its weights (JSON-able)."""
        r = self.record
        return {"format": f"promptkd-classifier/{FORMAT_VERSION}", "method": r.method, "dataset": r.dataset,
                "classnames": list(r.classnames), "preprocess": r.preprocess, "backbone": r.backbone,
                "fingerprint": r.fingerprint, "input": "float32 [batch, 3, H, W] after `preprocess`",
                "output": "logits [batch, len(classnames)]"}

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        device = self.model.class_vectors.device
        return self.model(images.to(device, torch.float32)).float()


def add_run_arguments(parser) -> None:
    """The command-line arguments that name a run and how to read it (predict, export_model);
    `promptkd.deploy.hub.load_predictor(args.run_dir, args.weights_dir or None, args.trust_pickled)` reads them
    (a run, or a model folder)."""
    parser.add_argument("run_dir", help="run output folder, its export folder, a predictor.pt, or a model folder "
                        "(promptkd.deploy.hub; hf-hub:OWNER/NAME from the local Hugging Face cache)")
    parser.add_argument("--weights-dir", default="", help="folder holding named CLIP files (ViT-B-16.pt, ...); "
                        "default: the one the run used")
    parser.add_argument("--trust-pickled", action="store_true",
                        help="allow reading a published torch 1.x checkpoint the run refers to (trusted files only)")
