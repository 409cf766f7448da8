"""Convert a published PromptKD / PromptSRC checkpoint into a model folder (no pickle left).

    promptkd convert TEACHER.pth.tar DIR --trust-pickled --backbone ViT-L/14 --classnames names.txt --dataset NAME
    promptkd convert STUDENT.pth.tar DIR --trust-pickled --backbone ViT-B/16 --teacher TEACHER

The released `VLPromptLearner/model*.pth.tar` files were written by torch 1.x and pickle Python
objects, so they are read only with --trust-pickled (layout: docs/running.md, "Published
checkpoint layout"); teacher or student is told from the keys. They also carry a copy of the
frozen CLIP image tower: it must be the stock backbone named by --backbone (the weight
fingerprints are compared and a mismatch is refused, naming both), which the folder then
references instead of copying. What is written is `promptkd.deploy.hub`'s folder: config.json,
model.safetensors, README.md.

* A teacher: its class vectors are computed here, with the checkpoint's own text tower and
  prompts, for the class names of --classnames (one per line, in label order: the dataset's
  classes as its loader lists them) under dataset name --dataset (DATASET.NAME, e.g. ImageNet).
* A student: the class vectors it was distilled on come from --teacher (a teacher's model
  folder or `hf-hub:` repo, an export folder, or a class_vectors_<Dataset>.pt file).
"""
from __future__ import annotations

import argparse
import glob
import logging
import os

import torch

from . import hub
from ..backbones import backbone_reference, load_backbone, load_image_tower, visual_from_state_dict
from ..checkpoints import read_published, split_published_student, split_published_teacher
from ..class_vectors import ClassVectors, visual_fingerprint
from ..errors import ConfigError, MissingFileError, UserError
from ..io import read_text
from .predictor import PredictorRecord, preprocess_settings

logger = logging.getLogger("promptkd")

TRUST_HINT = ("A published checkpoint is a torch 1.x file that pickles Python objects (loading it can run code): "
              "convert it only if you trust it, with --trust-pickled.")


def _preprocess(pp) -> dict:
    return preprocess_settings(pp.size, pp.interpolation, pp.mean, pp.std, pp.resize_mode)


def _check_same(found: str, stock: str, path: str, backbone: str) -> None:
    """The checkpoint's image tower must be the stock backbone's (fingerprints), or it cannot be referenced."""
    if found != stock:
        raise ConfigError(f"The image tower in {path} has weight fingerprint {found}, but the stock backbone "
                          f"{backbone} has {stock}: it was not trained on {backbone} (or its backbone weights were "
                          "changed), so a model folder cannot reference it. Give the backbone it was trained on "
                          "(--backbone, --weights-dir).")


def read_classnames(path: str) -> list[str]:
    names = [line.strip() for line in read_text(path, what="class-name list", fix="One class name a line, in "
                                                "label order.").splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"{path} lists no class names (one a line, in label order).")
    return names


def teacher_vectors(teacher: str) -> ClassVectors:
    """The class vectors of --teacher: a model folder / hf-hub: repo, an export folder, or a file."""
    if hub.names_model_folder(teacher):
        return hub.teacher_export(teacher)[0]
    if os.path.isdir(teacher):
        files = sorted(glob.glob(os.path.join(teacher, "class_vectors_*.pt")))
        if len(files) != 1:
            raise MissingFileError(f"{teacher} holds {len(files)} class_vectors_<Dataset>.pt files ({', '.join(map(os.path.basename, files)) or 'none'}): "
                                   "give the one to use as --teacher FILE.")
        teacher = files[0]
    return ClassVectors.load(teacher)


def convert_teacher(path: str, backbone: str, classnames: list[str], dataset: str,
                    weights_dir: str | None = None) -> PredictorRecord:
    from ..teacher import IVLPTeacher, load_published_teacher

    clip_model, pp = load_backbone(backbone, weights_dir)
    stock = visual_fingerprint(clip_model.visual)  # before the checkpoint's weights replace it
    pub = split_published_teacher(path, trusted=True)
    text, image = pub["text_prompts"], pub["image_prompts"]
    model = IVLPTeacher(clip_model, classnames, text[0].shape[0] if text else 4, len(text), "",
                        image[0].shape[0] if image else 4, len(image), regularise=False)
    load_published_teacher(model, path, trusted=True)
    _check_same(visual_fingerprint(model.clip.visual), stock, path, backbone)
    model.eval()
    with torch.no_grad():
        vectors, side = model.export(classnames, dataset, backbone_reference(backbone), method="PromptKDTeacher")
    vectors.teacher.update(precision="fp32", converted_from=os.path.basename(path))
    return PredictorRecord.for_image_side(vectors, side, _preprocess(pp))


def convert_student(path: str, backbone: str, vectors: ClassVectors, weights_dir: str | None = None) -> PredictorRecord:
    from ..student import PromptKDStudent, load_published_student

    pub = split_published_student(path, trusted=True)
    published = visual_from_state_dict({**pub["visual_state"], "logit_scale": pub["logit_scale"]})[0]
    visual, scale, pp = load_image_tower(backbone, weights_dir)
    _check_same(visual_fingerprint(published), visual_fingerprint(visual), path, backbone)
    prompts = pub["image_prompts"]
    student = PromptKDStudent(visual, scale, vectors.width, prompts[0].shape[0] if prompts else 4, len(prompts))
    load_published_student(student, path, trusted=True)
    return PredictorRecord.for_student(student.eval(), vectors, backbone_reference(backbone), _preprocess(pp))


def convert(path: str, out: str, backbone: str, *, trusted: bool, weights_dir: str | None = None,
            classnames: list[str] | None = None, dataset: str = "", teacher: str = "") -> PredictorRecord:
    """Write the model folder `out` of the published checkpoint `path`; returns its record."""
    if not trusted:
        raise UserError(f"{path}: {TRUST_HINT}")
    state = read_published(path, trusted=True)
    is_student = "VPT_image_trans.conv1.0.weight" in state
    del state
    if is_student:
        if not teacher:
            raise ConfigError(f"{path} is a PromptKD student: give --teacher (the teacher's model folder, export "
                              "folder or class-vector file) for the class vectors it was distilled on.")
        record = convert_student(path, backbone, teacher_vectors(teacher), weights_dir)
    else:
        if not classnames or not dataset:
            raise ConfigError(f"{path} is a teacher: give --classnames FILE (the dataset's class names, one a line, "
                              "in label order) and --dataset NAME (DATASET.NAME) to compute its class vectors.")
        record = convert_teacher(path, backbone, classnames, dataset, weights_dir)
    hub.save_pretrained(record, out, source={"converted_from": os.path.basename(path),
                                             "kind": "student" if is_student else "teacher"})
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    parser.add_argument("checkpoint", help="a published VLPromptLearner/model*.pth.tar (PromptKD student, "
                        "PromptSRC / PromptKD teacher)")
    parser.add_argument("out", help="the model folder to write")
    parser.add_argument("--backbone", required=True, help="the stock CLIP it was trained from (ViT-L/14 for the "
                        "paper's teachers, ViT-B/16 for its students), a CLIP name or file")
    parser.add_argument("--weights-dir", default="", help="folder holding the named CLIP files (default ~/.cache/clip)")
    parser.add_argument("--trust-pickled", action="store_true", help="allow reading the pickled checkpoint "
                        "(trusted files only)")
    parser.add_argument("--classnames", default="", help="teacher: a text file of the class names, one a line, "
                        "in label order")
    parser.add_argument("--dataset", default="", help="teacher: the dataset's name (DATASET.NAME)")
    parser.add_argument("--teacher", default="", help="student: the teacher's model folder (or hf-hub:OWNER/NAME), "
                        "export folder, or class-vector file")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = read_classnames(args.classnames) if args.classnames else None
    record = convert(args.checkpoint, args.out, args.backbone, trusted=args.trust_pickled,
                     weights_dir=args.weights_dir or None, classnames=names, dataset=args.dataset,
                     teacher=args.teacher)
    print(f"wrote the model folder {args.out}: {hub.role(record)} {record.method} on {record.dataset} "
          f"({len(record.classnames)} classes), backbone {record.backbone['name']} (fingerprint {record.fingerprint}); "
          "it loads without pickles (promptkd.deploy.hub.from_pretrained)")
    return 0
