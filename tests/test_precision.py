"""fp32 scoring under mixed precision (`promptkd.precision`), on the CPU under bf16 autocast.

The towers may run in bf16; from the features on (projector, normalisation, logits against the
class vectors, softmax / KL / CE) everything must be fp32. Each test checks two things: the
result is fp32, and it equals the fp32 scoring of the same features (computed outside
autocast) to 1e-5 (fp32 rounding of one matmul over widths <= 128 is ~1e-6 at logits of ~30;
bf16 scoring is off by ~0.1 there, see `test_bf16_scoring_would_be_coarse`).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from promptkd.baselines import CoCoOp, CoOp
from promptkd.evaluation import accuracy_report, predictions
from promptkd.losses import kd_loss, promptsrc_loss
from promptkd.precision import class_logits, normalise
from promptkd.student import PromptKDStudent, TeacherImageScorer, teacher_logits
from promptkd.teacher import IVLPTeacher

CLASSES = ["red circle", "blue_square", "green triangle", "yellow star", "black stripes"]
SCALE = torch.tensor(math.log(100.0))  # CLIP's trained logit scale: logits of ~20-35
TOL = 1e-5


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def images(model, n=4, seed=0):
    r = model.visual.input_resolution
    return torch.randn(n, 3, r, r, generator=torch.Generator().manual_seed(seed))


def vectors(n, width, seed=1):
    return F.normalize(torch.randn(n, width, generator=torch.Generator().manual_seed(seed)), dim=-1)


def close(a, b):
    assert a.dtype == torch.float32, a.dtype
    assert (a - b).abs().max().item() <= TOL, (a - b).abs().max().item()


def test_bf16_scoring_would_be_coarse():
    """Why this matters: the same expression inside autocast comes back bf16 and visibly off,
    so the tests below can tell fp32 scoring from bf16 scoring."""
    f, v = vectors(8, 96, seed=3), vectors(100, 96, seed=4)
    f = F.normalize(f + 2 * v[:8], dim=-1)  # aligned with their classes: logits up to ~90
    exact = SCALE.exp() * f @ v.t()
    with bf16():
        naive = SCALE.exp() * f @ v.t()
        ours = class_logits(f, v, SCALE.exp())
    assert naive.dtype == torch.bfloat16 and (naive.float() - exact).abs().max() > 1e-2
    close(ours, exact)


def test_student_logits_are_fp32_under_bf16_autocast(student_clip):
    student = PromptKDStudent(student_clip.visual, SCALE, 96, n_ctx=2, depth=2).eval()
    x, v = images(student_clip), vectors(5, 96)
    with bf16():
        feats = student.image_encoder(x)  # the tower in bf16: these are "the same features"
        logits = student(x, v)
    assert feats.dtype == torch.bfloat16
    expected = SCALE.exp() * F.normalize(student.projector(feats.float()), dim=-1) @ v.t()  # no autocast
    close(logits, expected)


def test_student_gradients_flow_through_the_fp32_projector(student_clip):
    student = PromptKDStudent(student_clip.visual, SCALE, 96, n_ctx=2, depth=2)
    with bf16():
        logits = student(images(student_clip), vectors(5, 96))
    kd_loss(logits, torch.randn(4, 5), 1.0, 1.0).backward()
    grads = {n: p.grad for n, p in student.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.dtype == torch.float32 for n, g in grads.items() if n.startswith("projector"))


def test_teacher_scorer_and_cache_scoring_are_fp32(teacher_clip):
    prompts = [torch.randn(2, teacher_clip.visual.class_embedding.shape[0]) for _ in range(2)]
    scorer = TeacherImageScorer(teacher_clip.visual, SCALE, prompts)
    x, v = images(teacher_clip), vectors(7, 96)
    with bf16():
        raw = scorer.image_encoder(x)
        e = scorer.embed(x)  # what the teacher cache stores
        online = scorer(x, v)
        from_cache = teacher_logits(e, SCALE, v)  # the cache path scores stored embeddings
    assert raw.dtype == torch.bfloat16 and e.dtype == torch.float32
    close(e, F.normalize(raw.float(), dim=-1))
    expected = SCALE.exp() * F.normalize(raw.float(), dim=-1) @ v.t()
    close(online, expected)
    close(from_cache, expected)


@pytest.mark.parametrize("method", ["IVLP", "CoOp", "CoCoOp"])
def test_prompt_methods_train_and_evaluate_with_fp32_logits(teacher_clip, method):
    model = {"IVLP": lambda: IVLPTeacher(teacher_clip, CLASSES, 4, 2, "a photo of a", 4, 2),
             "CoOp": lambda: CoOp(teacher_clip, CLASSES, 4, ""),
             "CoCoOp": lambda: CoCoOp(teacher_clip, CLASSES, 4, "a photo of a")}[method]().train()
    x = images(teacher_clip)
    with bf16():
        out = model(x)
        feats = model.image_features(x)
    assert out["logits"].dtype == torch.float32 and out["image_feats"].dtype == torch.float32
    close(out["image_feats"], F.normalize(feats.float(), dim=-1))
    if "text_feats" in out:
        close(out["logits"], model.logit_scale * out["image_feats"] @ out["text_feats"].t())
    if method == "IVLP":  # PromptSRC's frozen-CLIP logits too, and its losses
        assert out["zs_logits"].dtype == torch.float32
        close(out["zs_logits"], model.logit_scale * out["zs_image_feats"] @ out["zs_text_feats"].t())
        with bf16():
            terms = promptsrc_loss(out["logits"], torch.tensor([0, 1, 2, 3]), out["text_feats"], out["zs_text_feats"],
                                   out["image_feats"], out["zs_image_feats"], out["zs_logits"], 25.0, 10.0, 1.0)
        assert all(t.dtype == torch.float32 for t in terms.values())
        close(terms["ce"], F.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 3])))
    model.eval()
    model.prepare_eval(CLASSES)
    with torch.no_grad(), bf16():
        logits = model.eval_logits(x)
    assert logits.dtype == torch.float32 and logits.shape == (4, len(CLASSES))


def test_kd_loss_and_predictions_are_the_same_inside_autocast():
    s, t = 30 * torch.randn(6, 9), 30 * torch.randn(6, 9)
    with bf16():
        inside = kd_loss(s, t, 2.0, 1000.0)
        preds = predictions(s, 5)
    close(inside, kd_loss(s, t, 2.0, 1000.0))
    assert torch.equal(preds, predictions(s, 5))


def test_normalise_is_fp32_and_unit_norm():
    x = torch.randn(5, 33).bfloat16()
    with bf16():
        n = normalise(x)
    assert n.dtype == torch.float32
    close(n.norm(dim=-1), torch.ones(5))


def test_predictions_give_the_logits_report():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(40, 7, generator=g), torch.randint(0, 7, (40,), generator=g)
    preds = predictions(logits, 4)
    assert preds.dtype == torch.int64 and preds.shape == (40, 3)
    assert torch.equal(preds[:, 0], logits.argmax(1)) and (preds[:, 1] < 4).all() and (preds[:, 2] >= 4).all()
    report = accuracy_report(logits, labels, "base2novel", 4)
    base = labels < 4
    assert report["base"] == pytest.approx(100 * (logits[base][:, :4].argmax(1) == labels[base]).float().mean().item())
    assert report["novel"] == pytest.approx(
        100 * ((logits[~base][:, 4:].argmax(1) + 4) == labels[~base]).float().mean().item())
