"""The published PromptSRC / PromptKD checkpoint formats (docs/running.md, "Published checkpoint
layout"), synthesised from their key patterns: the torch-1.x pickled files the published code
wrote, made from our models, so that loading them back can be compared with the model they came
from (tests/test_published.py, test_convert.py, test_io.py, test_trainers.py, test_predict_export.py).
"""
import torch
import torch.nn.functional as F

from promptkd.student import PromptKDStudent
from promptkd.teacher import IVLPTeacher

CLASSES = ["tench", "goldfish", "great_white_shark", "tiger shark", "hammerhead"]


class FakeScheduler:
    """Stands in for the torch-1.x scheduler object the published files pickle."""

    def __init__(self):
        self.last_epoch = 20


def _visual_keys(visual, prefix, deep):
    sd = {f"{prefix}.{k}": v.clone() for k, v in visual.state_dict().items()}
    sd[f"{prefix}.VPT"] = deep[0].detach().clone()
    for i, p in enumerate(deep[1:], 1):
        sd[f"{prefix}.transformer.resblocks.{i}.VPT_shallow"] = p.detach().clone()
    return sd


def _save(path, state):
    torch.save({"state_dict": state, "epoch": 20, "optimizer": None, "scheduler": FakeScheduler(),
                "val_result": 80.0}, path)


def published_teacher(teacher: IVLPTeacher, path):
    clip_sd = teacher.clip.state_dict()
    sd = {"logit_scale": clip_sd["logit_scale"].clone(),
          "prompt_learner.ctx": teacher.text_encoder.prompts[0].detach().clone(),
          "prompt_learner.token_prefix": torch.randn(3, 1, 128),
          "prompt_learner.token_suffix": torch.randn(3, 72, 128),
          "prompt_learner.ZS_image_encoder.conv1.weight": torch.randn(4)}
    sd.update(_visual_keys(teacher.clip.visual, "image_encoder", list(teacher.image_encoder.prompts)))
    for k, v in clip_sd.items():
        if k.startswith(("transformer.", "ln_final.")) or k in ("positional_embedding", "text_projection"):
            sd[f"text_encoder.{k}"] = v.clone()
    for i, p in enumerate(list(teacher.text_encoder.prompts)[1:], 1):
        sd[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = p.detach().clone()
    _save(path, sd)


def teacher_logits(teacher, images):
    with torch.no_grad():
        f = F.normalize(teacher.image_encoder(images).float(), dim=-1)
        return teacher.logit_scale * f @ teacher.class_vectors(CLASSES).t()


def published_student(student: PromptKDStudent, path):
    sd = _visual_keys(student.image_encoder.visual, "image_encoder", list(student.image_encoder.prompts))
    proj = student.projector
    sd.update({
        "logit_scale": student.logit_scale.clone(),
        "VPT_image_trans.conv1.0.weight": proj[0].weight.detach()[:, :, None, None].clone(),
        "VPT_image_trans.conv1.0.bias": proj[0].bias.detach().clone(),
        "VPT_image_trans.conv1.3.weight": proj[3].weight.detach()[:, :, None, None].clone(),
        "VPT_image_trans.conv1.3.bias": proj[3].bias.detach().clone(),
    })
    for k, v in proj[1].state_dict().items():
        sd[f"VPT_image_trans.conv1.1.{k}"] = v.clone()
    _save(path, sd)


def trained_student(clip_model) -> PromptKDStudent:
    """A student as training leaves it: random prompts and projector, BatchNorm statistics set."""
    torch.manual_seed(3)
    trained = PromptKDStudent(clip_model.visual, clip_model.logit_scale, 96, 4, 2)
    with torch.no_grad():
        trained.projector[1].running_mean.normal_()
        trained.projector[1].running_var.uniform_(0.5, 2.0)
    return trained.eval()
